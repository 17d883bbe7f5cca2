"""Every bad input to `tms sweep` is one line, exit status 2, nothing created — before Ray starts.

One test per family: settings, non-finite values, names that could leave the config tree or
the store, grids, memory, and stores (a file, read-only, unknown scheme, full, corrupt).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, store_files, tms
from tms.cli import main

FAST = ["train.steps=300", "wandb.mode=disabled", "ray.num_cpus=1"]


def refused(capsys, args: list[str], message: str, store: Path) -> str:
    before = sorted(map(str, store_files(store))) if store.exists() else None
    rc = main(["sweep", f"store={store}", *FAST, *args])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err + out
    after = sorted(map(str, store_files(store))) if store.exists() else None
    assert after == before, "bad input created something"
    return err


SETTINGS = [
    (["model.n_featurs=3"], "model.n_featurs: unknown key; allowed in model: kind, n_features"),
    (["+model.width=3"], "model.width: unknown key"),
    (["model.n_features=abc"], "model.n_features: expected integer, got 'abc'"),
    (["data.density=1.5"], "data.density: must be in (0, 1], got 1.5"),
    (["data.density=1.0,0.0"], "data.density: must be in (0, 1], got 0.0 (at data.density=0.0)"),
    (["model.n_hidden=0"], "model.n_hidden: must be >= 1, got 0"),
    (["model.kind=quadratic"], "model.kind: got 'quadratic'; allowed: linear, relu_out, relu_hidden, abs"),
    (["wandb.mode=sometimes"], "wandb.mode: got 'sometimes'; allowed: auto, online, offline, disabled"),
    (["data.importance_values=[1.0,2.0]", "model.n_features=3"], "data.importance_values: length 2 != model.n_features 3"),
    (["--resume"], "--resume: unknown option"),
    (["store="], "store: must be a path or a URI"),
    (["ray.gpus_per_trial=1.5"], "ray.gpus_per_trial: fractions must be <= 1"),
    (["wandb.runs=pack"], "wandb.runs: got 'pack'; allowed: auto, point, trial"),
    (["wandb.max_point_runs=-1"], "wandb.max_point_runs: must be >= 0, got -1"),
    (["sweep.checkpoint_every_s=-5"], "sweep.checkpoint_every_s: must be seconds >= 0 or null, got -5.0"),
    (["sweep.lease_ttl_s=1"], "sweep.lease_ttl_s: must be a number of seconds >= 5, got 1.0"),
    (["ray.wait_for_resources_s=inf"], "ray.wait_for_resources_s: must be a number of seconds >= 0, got inf"),
]

NON_FINITE = [
    ("train.lr=inf", "train.lr: must be finite and > 0, got inf"),
    ("train.lr=nan", "train.lr: must be finite and > 0, got nan"),
    ("train.lr=0.001,inf", "train.lr: must be finite and > 0, got inf (at train.lr=inf)"),
    ("train.weight_decay=inf", "train.weight_decay: must be finite, got inf"),  # negative is allowed (the scaling experiment)
    ("train.eps=inf", "train.eps: must be finite and > 0, got inf"),
    ("model.l1_penalty=inf", "model.l1_penalty: must be finite and >= 0, got inf"),
    ("data.importance_decay=inf", "data.importance_decay: must be finite and > 0, got inf"),
    ("data.extra_importance=inf", "data.extra_importance: must be finite and > 0, got inf"),
    ("data.extra_importance=-inf", "data.extra_importance: must be finite and > 0, got -inf"),
    ("data.extra_density=inf", "data.extra_density: must be finite and > 0, got inf"),
    ("data.density=nan", "data.density: must be in (0, 1], got nan"),
    ("data.importance_values=[1.0,inf,0.5]", "data.importance_values: must be finite and >= 0"),
    ("data.density_values=[1.0,nan,0.5]", "data.density_values: must be in [0, 1]"),
]

NAMES = [
    (["experiment=../../../../tmp/elsewhere/target"], "experiment: '../../../../tmp/elsewhere/target' is not a "
                                                      "choice of the config tree; allowed: abs_value"),
    (["experiment=/etc/passwd"], "experiment: '/etc/passwd' is not a choice of the config tree"),
    (["experiment=intro/../../x"], "experiment: 'intro/../../x' is not a choice"),
    (["experiment=nope"], "experiment: unknown choice 'nope'; allowed: "),
    (["model=../../x"], "model: '../../x' is not a choice of the config tree"),
    (["+experiment@_global_=intro"], "experiment: not a setting of tms"),
    (["hydra.searchpath=[file:///tmp]"], "hydra.searchpath: not a setting of tms"),
    (["hydra/launcher=basic"], "hydra/launcher: not a setting of tms"),
    (["sweep.name=../x"], "sweep.name: got '../x'"),
    (["sweep.name=.."], "sweep.name: got '..'"),
    (["sweep.name=a/b"], "sweep.name: got 'a/b'"),
    (["sweep.name_suffix=/x"], "sweep.name_suffix: got '/x'"),
]

GRIDS = [
    (["data.density=range(5,5)"], "data.density: the grid is empty"),
    (["experiment=phase_n2m1", "sweep.max_points=100"],
     "sweep.max_points: the grid has 1690 points, above sweep.max_points=100; pass sweep.max_points=1690"),
    (["data.density=range(0,10000000)"], "sweep.max_points: the grid has 10000000 points"),
    (["train.lr=linspace(0.001,0.1,100000000)"], "sweep.max_points: the grid has 100000000 points"),
    (["sweep.seeds=1,2"], "sweep.seeds: cannot be swept"),
    (["experiment=intro,phase_n2m1"], "experiment: sweeping over config groups is not supported"),
    (["data.density=geomspace(1,0,3)"], "data.density: cannot parse"),
    (["data.density=linspace(0,1,-1)"], "data.density: cannot parse"),
    (["data.density=0.1,0.1"], "data.density: value 0.1 appears twice"),
    (["model.n_features=2,abc"], "model.n_features: expected integer, got 'abc'"),
]


@pytest.mark.parametrize("args,message", SETTINGS, ids=[" ".join(a) for a, _ in SETTINGS])
def test_bad_settings(args, message, store, capsys):
    refused(capsys, args, message, store)


@pytest.mark.parametrize("arg,message", NON_FINITE, ids=[a for a, _ in NON_FINITE])
def test_non_finite_rates_importances_and_densities(arg, message, store, capsys):
    refused(capsys, [arg], message, store)


@pytest.mark.parametrize("args,message", NAMES, ids=[" ".join(a) for a, _ in NAMES])
def test_names_cannot_leave_the_config_tree_or_the_store(args, message, store, capsys):
    refused(capsys, args, message, store)
    assert not Path("/tmp/elsewhere/target").exists()


@pytest.mark.parametrize("args,message", GRIDS, ids=[" ".join(a) for a, _ in GRIDS])
def test_bad_grids(args, message, store, capsys):
    refused(capsys, args, message, store)


def test_a_cluster_that_does_not_answer_is_refused_before_anything_starts(store, capsys):
    refused(capsys, ["ray.address=127.0.0.1:1"], "ray.address: nothing answers at 127.0.0.1:1 (Connection refused)",
            store)
    refused(capsys, ["ray.address=nonsense"], "ray.address: expected host:port, auto or a ray:// URL", store)


def test_a_point_that_cannot_fit_the_machine_is_refused(store, capsys):
    err = refused(capsys, ["model.n_features=1000000"], "model: one point needs about", store)
    assert "more than this machine's memory" in err and "make model.n_features or train.batch_size smaller" in err
    refused(capsys, ["model.n_features=100000", "train.batch_size=20000"], "more than this machine's memory", store)
    # beyond what the random stream can draw in one step, the trainer's own check answers first
    refused(capsys, ["model.n_features=100000000"], "train.batch_size: model.n_features × rows", store)


# ----------------------------------------------------------------------------- stores

def test_a_store_that_is_a_file_or_has_a_file_in_the_way(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a folder")
    refused(capsys, ["sweep.name=x"], f"store: {path} is not a directory (it would have to hold {path}/x)", path)
    folder = tmp_path / "store"
    (folder / "x").mkdir(parents=True)
    (folder / "x" / "sweep.json").write_text("")
    (folder / "y").write_text("a file where the sweep's folder would be")
    refused(capsys, ["sweep.name=y"], f"store: {folder / 'y'} is not a directory", folder)


def test_unknown_schemes_and_unreachable_uris(tmp_path, capsys):
    refused(capsys, ["sweep.name=x", "store=foo://bucket/runs"],
            "store: unknown filesystem scheme 'foo' in 'foo://bucket/runs'", tmp_path / "store")
    refused(capsys, ["sweep.name=x", "store=s3://"], "store: 's3://' names no bucket or folder", tmp_path / "store")


def test_a_corrupt_sweep_json_is_named(tmp_path, capsys):
    folder = tmp_path / "store"
    (folder / "x").mkdir(parents=True)
    for content in ("{not json", "[1, 2]", "\xff\xfe"):
        (folder / "x" / "sweep.json").write_bytes(content.encode("latin-1"))
        refused(capsys, ["sweep.name=x"], f"store: {folder}/x/sweep.json is not", folder)


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs (root only; skipped where mounting is not allowed)."""
    mounted = []

    def mount(size: str, readonly: bool = False) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_a_full_disk_is_refused_before_anything_is_written(small_fs, capsys):
    full = small_fs("1m")
    err = refused(capsys, ["sweep.name=big", "model.n_features=200", "data.density=1.0,0.5,0.2,0.1"],
                  f"store: {full} has 1.0 MB free but the sweep will write about", full)
    assert "free some space or use another store=" in err
    assert not list(full.iterdir()), "nothing created, not even a lock"


def test_a_read_only_folder_is_refused(tmp_path, small_fs, capsys):
    if os.geteuid() == 0:
        folder = small_fs("1m", readonly=True)
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    refused(capsys, ["sweep.name=x"], f"store: cannot write in {folder}: Read-only file system"
            if os.geteuid() == 0 else f"store: cannot write in {folder}: Permission denied", folder)


# ----------------------------------------------------------------------------- the real command

def test_the_real_command_answers_without_loading_torch_ray_or_wandb(store):
    """Help and bad input load none of the heavy packages (they cost seconds)."""
    code = (
        "import sys\n"
        "from tms.cli import main\n"
        f"cases = [['--help'], ['sweep', '--help'], ['sweep', 'model.n_featurs=3'], ['sweep', 'train.lr=inf'],"
        f" ['sweep', 'store={store}', 'data.density=range(0,10000000)'], ['sweep', 'store=foo://x'],"
        f" ['sweep', 'store={store}', 'model.n_features=1000000'], ['status', '{store}'], ['nope']]\n"
        "for argv in cases:\n"
        "    rc = main(argv)\n"
        "    heavy = sorted(m for m in ('torch', 'ray', 'wandb') if m in sys.modules)\n"
        "    print(rc, heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line[:1].isdigit()]
    assert lines == ["0 []", "0 []"] + ["2 []"] * 7, proc.stdout + proc.stderr
    assert not store.exists()


def test_bad_input_from_the_real_command_has_no_traceback(store):
    proc = tms("sweep", f"store={store}", "experiment=intro", "data.density=0,0.5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: data.density: must be in (0, 1], got 0.0 (at data.density=0.0)"]
    assert not store.exists()


def test_unknown_command_and_no_command_exit_non_zero(capsys):
    assert main(["swep", "experiment=intro"]) == 2
    assert capsys.readouterr().err == "error: command: unknown 'swep'; allowed: sweep, submit, status, analyze\n"
    assert main([]) == 2 and "usage: tms sweep" in capsys.readouterr().out
