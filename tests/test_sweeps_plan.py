"""Composing, grid expansion, point ids, packing and bad input — no Ray needed."""

import math

import pytest

import toymodels
from conftest import ROOT, tms
from sweeps.cli import main
from sweeps.plan import make_plan

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def test_the_issue_experiments_exist():
    assert {"intro", "phase_n2m1"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_its_smoke_version_is_small(experiment):
    full = make_plan([f"experiment={experiment}"])
    smoke = make_plan([f"experiment={experiment}", "debug=smoke"])
    assert full.name == experiment and smoke.name == f"{experiment}-smoke"
    assert full.swept and len(full.points) == math.prod(map(len, full.axes.values())) * full.config["sweep"]["seeds"]
    # smoke keeps every swept key, at most 4 values each with both ends, 2 seeds, 2,000 steps
    assert smoke.swept == full.swept
    for key, values in smoke.axes.items():
        assert len(values) <= 4 and values[0] == full.axes[key][0] and values[-1] == full.axes[key][-1]
    assert smoke.config["sweep"]["seeds"] == 2 and smoke.config["train"]["steps"] <= 2000
    model_steps = sum(smoke.spec(p).train.steps for p in smoke.points)
    assert model_steps <= 150_000, "debug=smoke must stay a one-minute sweep on 2 cores"


def test_intro_and_phase_experiments_match_the_paper():
    intro = make_plan(["experiment=intro"])
    spec = intro.spec(intro.points[0])
    assert (spec.model.n_features, spec.model.n_hidden, spec.data.importance_decay) == (5, 2, 0.9)
    assert intro.swept == ["data.density"] and max(intro.axes["data.density"]) == 1.0
    assert min(intro.axes["data.density"]) == pytest.approx(0.05)
    phase = make_plan(["experiment=phase_n2m1"])
    spec = phase.spec(phase.points[0])
    assert (spec.model.n_features, spec.model.n_hidden) == (2, 1)
    assert set(phase.swept) == {"data.extra_importance", "data.density"}
    r = phase.axes["data.extra_importance"]
    assert min(r) == pytest.approx(0.1) and max(r) == pytest.approx(10.0)


def test_grid_syntax_comma_range_choice_and_spacing_helpers():
    plan = make_plan(["model.n_features=range(3,6)", "data.density=1.0,0.5", "train.lr=choice(0.001,0.01)",
                      "sweep.seeds=3"])
    assert plan.axes == {"model.n_features": [3, 4, 5], "data.density": [1.0, 0.5], "train.lr": [0.001, 0.01]}
    assert len(plan.points) == 3 * 2 * 2 * 3 and len(plan.cells) == 12
    assert {tuple(c) for c in plan.cells} == {(n, d, lr) for n in (3, 4, 5) for d in (1.0, 0.5) for lr in (0.001, 0.01)}

    spaced = make_plan(["data.density=geomspace(1,0.01,3)", "data.extra_importance=linspace(0.5,2,4)",
                        "train.lr=logspace(-4,-2,3)"])
    assert spaced.axes["data.density"] == [1.0, 0.1, 0.01]
    assert spaced.axes["data.extra_importance"] == [0.5, 1.0, 1.5, 2.0]
    assert spaced.axes["train.lr"] == [0.0001, 0.001, 0.01]
    # the spacing helpers compose with Hydra's own functions
    assert make_plan(["data.density=sort(geomspace(1,0.01,3))"]).axes["data.density"] == [0.01, 0.1, 1.0]


def test_command_line_replaces_the_experiment_grid():
    assert make_plan(["experiment=intro", "data.density=1.0,0.2,0.05"]).axes == {"data.density": [1.0, 0.2, 0.05]}
    single = make_plan(["experiment=intro", "data.density=0.3"])
    # one cell, intro's 8 seeds
    assert single.swept == [] and len(single.points) == 8 and single.spec(single.points[0]).data.density == 0.3
    assert make_plan(["experiment=intro", "sweep.name=mine", "debug=smoke"]).name == "mine-smoke"


def test_point_ids_are_stable_and_depend_only_on_settings_and_seed():
    args = ["experiment=intro", "data.density=1.0,0.1", "sweep.seeds=2"]
    a, b = make_plan(args), make_plan(list(reversed(args)))
    assert [p.point_id for p in a.points] == [p.point_id for p in b.points]
    assert len({p.point_id for p in a.points}) == 4 and a.grid_hash == b.grid_hash
    # execution knobs never change a point
    knobs = make_plan(args + ["sweep.points_per_trial=1", "ray.cpus_per_trial=2", "wandb.mode=disabled",
                              "store=elsewhere", "ray.max_failures=0", "ray.compile=false"])
    assert [p.point_id for p in knobs.points] == [p.point_id for p in a.points]
    # a setting, or the seed, does
    other = make_plan(args + ["train.lr=0.002"])
    assert not {p.point_id for p in other.points} & {p.point_id for p in a.points}
    reseeded = make_plan(args + ["sweep.base_seed=7"])
    assert [p.seed for p in reseeded.points][:2] == [7, 8]
    assert not {p.point_id for p in reseeded.points} & {p.point_id for p in a.points}
    # the seeds of one cell share its cell_id, different cells do not
    cells = {}
    for p in a.points:
        cells.setdefault(p.cell_id, set()).add(p.seed_index)
    assert list(cells.values()) == [{0, 1}, {0, 1}]


def test_packing_groups_compatible_points_into_bounded_balanced_trials():
    plan = make_plan(["model.kind=linear,relu_out", "model.n_features=3,5", "data.density=1.0,0.5,0.2",
                      "sweep.seeds=3", "sweep.points_per_trial=4"])
    trials = plan.trials()
    packed = [p.point_id for t in trials for p in t.points]
    assert sorted(packed) == sorted(p.point_id for p in plan.points)  # every point exactly once
    for t in trials:
        keys = {toymodels.pack_key(plan.spec(p)) for p in t.points}
        assert len(keys) == 1, "a trial mixes points the trainer cannot vectorise"
        assert 1 <= len(t.points) <= 4
    # 4 pack groups of 9 points: 3 trials each, sizes 3/3/3 rather than 4/4/1
    assert len(trials) == 12 and sorted({len(t.points) for t in trials}) == [3]
    assert [t.trial_key for t in plan.trials()] == [t.trial_key for t in trials]
    assert len({t.trial_key for t in trials}) == len(trials)
    # the payload a worker gets is plain data that rebuilds the same specs
    payload = plan.trial_payload(trials[0])
    from sweeps.run import build_spec, cell_settings
    rebuilt = [build_spec(cell_settings(payload["base"], payload["swept"], v), s)
               for v, s in zip(payload["values"], payload["seeds"])]
    assert rebuilt == [plan.spec(p) for p in trials[0].points]


FAST_WITHOUT_RAY = ["train.steps=300", "wandb.mode=disabled"]
BAD = [
    (["model.n_featurs=3"], "model.n_featurs: unknown key; allowed in model: kind, n_features"),
    (["+model.width=3"], "model.width: unknown key"),
    (["model.n_features=abc"], "model.n_features: expected integer, got 'abc'"),
    (["data.density=1.5"], "data.density: must be in (0, 1], got 1.5"),
    (["data.density=1.0,0.0"], "data.density: must be in (0, 1], got 0.0"),
    (["model.n_hidden=0"], "model.n_hidden: must be >= 1, got 0"),
    (["model.kind=quadratic"], "model.kind: got 'quadratic'; allowed: linear, relu_out, relu_hidden, abs"),
    (["experiment=nope"], "experiment: unknown choice 'nope'; allowed: "),
    (["data.density=range(5,5)"], "data.density: the grid is empty"),
    (["experiment=phase_n2m1", "sweep.max_points=100"],
     "sweep.max_points: the grid has 1690 points, above sweep.max_points=100; pass sweep.max_points=1690"),
    (["sweep.seeds=1,2"], "sweep.seeds: cannot be swept"),
    (["wandb.mode=sometimes"], "wandb.mode: got 'sometimes'; allowed: auto, online, offline, disabled"),
    (["data.density=geomspace(1,0,3)"], "data.density: cannot parse"),
    (["data.density=0.1,0.1"], "data.density: value 0.1 appears twice"),
    (["sweep.name=../x"], "sweep.name: got '../x'"),
    (["--resume"], "--resume: unknown option"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line_and_creates_nothing(args, message, store, capsys):
    rc = main(["sweep", f"store={store}", *FAST_WITHOUT_RAY, *args])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err + out
    assert not store.exists()


def test_bad_input_from_the_real_command_has_no_traceback(store):
    proc = tms("sweep", f"store={store}", "experiment=intro", "data.density=0,0.5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: data.density: must be in (0, 1], got 0.0 (at data.density=0.0)"]
    assert not store.exists()


def test_dry_run_prints_the_plan_and_creates_nothing(store):
    proc = tms("sweep", "--dry-run", f"store={store}", "experiment=intro", "debug=smoke")
    assert proc.returncode == 0, proc.stderr
    assert "sweep intro-smoke: 8 points = 4 cells x 2 seeds in 1 trials" in proc.stdout
    assert not store.exists()


def test_unknown_command_and_no_command_exit_non_zero(capsys):
    assert main(["swep", "experiment=intro"]) == 2
    assert capsys.readouterr().err == "error: command: unknown 'swep'; allowed: sweep, submit, analyze\n"
    assert main([]) == 2 and "usage: tms sweep" in capsys.readouterr().out
