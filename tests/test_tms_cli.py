"""The `tms` command on a store the released code wrote (schema v1, tests/data/store_v1):
it resumes and is analysed; `tms status`; `tms analyze` options, URIs, W&B and bad input."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import FAST, read_store, store_files, tms
from sweeps import points as pts
from tms.cli import main

pytestmark = pytest.mark.serial  # sweeps on Ray (the v1 store): one at a time, in one test worker

V1 = Path(__file__).parent / "data" / "store_v1" / "v1"
ANALYZE = ["--formats", "png", "--max-timelines", "1", "--quiet"]


def _v1_overrides(store: Path) -> list[str]:
    """The command that wrote the v1 store, every setting spelled out (config defaults may move)."""
    config = yaml.safe_load((V1 / "config.yaml").read_text())
    settings = [f"{g}.{k}={json.dumps(v) if v is None or isinstance(v, list) else v}"
                for g in pts.POINT_GROUPS for k, v in config[g].items() if k not in config["grid"]]
    grid = [f"{k}={','.join(map(str, v))}" for k, v in config["grid"].items()]
    fast = [a for a in FAST if not a.startswith("train.")]  # its settings are the v1 store's own
    return ["sweep", f"store={store}", "sweep.name=v1", "sweep.seeds=2", "sweep.points_per_trial=2", *fast,
            *settings, *grid]


@pytest.fixture
def v1_store(tmp_path) -> Path:
    shutil.copytree(V1, tmp_path / "store" / "v1")
    return tmp_path / "store"


@pytest.mark.slow
def test_a_store_written_by_the_released_code_resumes_and_is_analysed(v1_store):
    sweep_dir = v1_store / "v1"
    args = _v1_overrides(v1_store)
    done = tms(*args)
    assert done.returncode == 0, done.stderr
    assert "all 4 points are done" in done.stderr, "same point ids, same grid: nothing to train"
    # an unfinished v1 store: one trial's commit is missing, its parts are left over
    lost = sorted((sweep_dir / "done").glob("*.parquet"))[0]
    lost.unlink()
    resumed = tms(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 points to train in 1 trials, resuming with 2 done, 3 stale files removed" in resumed.stderr
    s = read_store(sweep_dir)
    assert (s["points"].status == "done").all() and len(s["done"]) == 4 and s["done"].point_id.is_unique
    assert sorted(s["done"].generation.isna()) == [False, False, True, True], "old markers have no generation"
    assert not s["metrics"].duplicated(["point_id", "step"]).any()
    analysed = tms("analyze", str(sweep_dir), *ANALYZE)
    assert analysed.returncode == 0, analysed.stdout + analysed.stderr
    assert (sweep_dir / "analysis" / "report.html").is_file()
    assert not (sweep_dir / "wandb").exists(), "the sweep had W&B off, so the analysis logs nothing"


def test_status_reads_counts_and_the_driver_from_the_store(v1_store, capsys):
    assert main(["status", str(v1_store / "v1")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep v1: 4 points: 4 done, 0 diverged, 0 failed, 0 pending (100% finished)"
    assert lines[1] == "driver: not running" and lines[2].startswith("commits: the last one ")
    assert main(["status", f"file://{v1_store / 'v1'}"]) == 0, "a URI works too"
    assert main(["status", str(v1_store)]) == 2
    assert capsys.readouterr().err == f"error: SWEEP_DIR: {v1_store} is not a sweep directory (no sweep.json)\n"


def test_analyze_parses_its_arguments_once_takes_uris_and_logs_to_wandb_when_asked(v1_store, tmp_path):
    sweep_dir = v1_store / "v1"
    out = tmp_path / "out"
    # an option before SWEEP_DIR, a file:// URI, W&B asked for although the sweep had it off
    proc = tms("analyze", "--aggregate", "best", f"file://{sweep_dir}", "--out", str(out), "--wandb", "offline",
               *ANALYZE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "report.html").is_file()
    runs = list((sweep_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and "logged" in proc.stderr and "(offline, the summary run of group v1)" in proc.stderr


def test_analyze_never_fails_over_wandb(v1_store, tmp_path):
    out = tmp_path / "out"
    proc = tms("analyze", str(v1_store / "v1"), "--out", str(out), "--wandb", "online", *ANALYZE,
               env={"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "report.html").is_file()
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("warning: W&B: the analysis was written but")
    assert "online needs a W&B login" in proc.stderr


def test_analyze_refuses_bad_axes_and_outputs_before_reading_the_store(v1_store, tmp_path, capsys):
    sweep_dir = v1_store / "v1"
    before = sorted(map(str, store_files(v1_store)))
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [
        (["--axes", "data.density,train.lr"], "--axes: train.lr was not swept in this sweep (swept: data.density)"),
        (["--axes", "data.density"], "--axes: expected two dotted keys X,Y"),
        (["--out", str(a_file)], f"--out: {a_file} is not a folder"),
        (["--out", str(a_file / "sub")], f"--out: {a_file} is not a folder"),
        (["--formats", "png", "--bogus"], "unrecognized arguments: --bogus"),
    ]
    for extra, message in cases:
        assert main(["analyze", str(sweep_dir), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["analyze", str(v1_store / "nope")]) == 2
    assert "no such sweep directory" in capsys.readouterr().err
    assert main(["analyze", f"file://{sweep_dir}"]) == 2
    assert "--out: a remote store needs --out DIR" in capsys.readouterr().err
    assert sorted(map(str, store_files(v1_store))) == before, "nothing written"


def test_help_lists_every_command_and_the_config_groups(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"tms {c}" in text for c in ("sweep", "submit", "status", "analyze"))
    assert main(["sweep", "--help"]) == 0
    assert "  experiment: abs_value, anticorrelated, basic" in capsys.readouterr().out
    assert main(["status", "--help"]) == 0 and "usage: tms status SWEEP_DIR" in capsys.readouterr().out
