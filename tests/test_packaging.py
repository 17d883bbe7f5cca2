"""Installable like a library: the wheel, installed in a fresh virtual environment, runs a sweep
and its analysis from another directory, with the config tree it ships.

The fresh environment takes its dependencies (torch, ray, …) from this one through a path
entry, so nothing is downloaded; the project itself comes from the wheel alone (the test
checks where each package is imported from).
"""

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from conftest import FAST, ROOT

pytestmark = pytest.mark.serial  # a sweep on Ray from the installed wheel: one at a time, in one test worker


@pytest.mark.slow
def test_the_wheel_runs_a_sweep_and_its_analysis_from_another_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(dist), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("tms_sweeps-*.whl"))

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # dependencies from this environment, as a plain path entry: its .pth files (among them
    # this checkout's editable install) are not processed there
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import json, analysis, sweeps, tms, toymodels, sweeps.grid as g; "
                            "print(json.dumps([m.__file__ for m in (analysis, sweeps, tms, toymodels)] + "
                            "[str(g.conf_dir())]))"], cwd=elsewhere, capture_output=True, text=True, check=True)
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(site), f"{path} does not come from the wheel"

    tms = str(env_dir / "bin" / "tms")
    sweep = subprocess.run([tms, "sweep", "experiment=intro", "debug=smoke", "store=runs", *FAST,
                            "data.density=1.0,0.05", "sweep.seeds=1"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    sweep_dir = elsewhere / "runs" / "intro-smoke"
    assert json.loads((sweep_dir / "sweep.json").read_text())["counts"]["done"] == 2
    analysis = subprocess.run([tms, "analyze", "runs/intro-smoke", "--formats", "png", "--max-timelines", "1"],
                              cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert analysis.returncode == 0, analysis.stdout + analysis.stderr
    assert (sweep_dir / "analysis" / "report.html").is_file()
