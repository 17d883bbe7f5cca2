"""Composing, grid expansion, point ids, packing — no Ray needed."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

import toymodels
from sweeps import points as pts
from sweeps.grid import conf_dir
from sweeps.plan import _traced_call, make_plan, point_bytes
from tms.cli import main

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
PINS = json.loads((Path(__file__).parent / "data" / "point_ids_v1.json").read_text())


def test_the_issue_experiments_exist():
    assert {"intro", "phase_n2m1"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_its_smoke_version_is_small(experiment):
    full = make_plan([f"experiment={experiment}"])
    smoke = make_plan([f"experiment={experiment}", "debug=smoke"])
    assert full.name == experiment and smoke.name == f"{experiment}-smoke"
    assert full.swept and len(full) == math.prod(map(len, full.axes.values())) * full.seeds
    # smoke keeps every swept key, at most 4 values each with both ends, 2 seeds, 2,000 steps
    assert smoke.swept == full.swept
    for key, values in smoke.axes.items():
        assert len(values) <= 4 and values[0] == full.axes[key][0] and values[-1] == full.axes[key][-1]
    assert smoke.seeds == 2 and smoke.config["train"]["steps"] <= 2000
    model_steps = sum(smoke.spec(i).train.steps for i in range(len(smoke)))
    assert model_steps <= 150_000, "debug=smoke must stay a one-minute sweep on 2 cores"


def test_intro_and_phase_experiments_match_the_paper():
    intro = make_plan(["experiment=intro"])
    spec = intro.spec(0)
    assert (spec.model.n_features, spec.model.n_hidden, spec.data.importance_decay) == (5, 2, 0.9)
    assert intro.swept == ["data.density"] and max(intro.axes["data.density"]) == 1.0
    assert min(intro.axes["data.density"]) == pytest.approx(0.05)
    phase = make_plan(["experiment=phase_n2m1"])
    spec = phase.spec(0)
    assert (spec.model.n_features, spec.model.n_hidden) == (2, 1)
    assert set(phase.swept) == {"data.extra_importance", "data.density"}
    r = phase.axes["data.extra_importance"]
    assert min(r) == pytest.approx(0.1) and max(r) == pytest.approx(10.0)


def test_grid_syntax_comma_range_choice_and_spacing_helpers():
    plan = make_plan(["model.n_features=range(3,6)", "data.density=1.0,0.5", "train.lr=choice(0.001,0.01)",
                      "sweep.seeds=3"])
    assert plan.axes == {"model.n_features": [3, 4, 5], "data.density": [1.0, 0.5], "train.lr": [0.001, 0.01]}
    assert len(plan) == 3 * 2 * 2 * 3 and len(plan.cell_ids) == 12
    assert {plan.cell_values(c) for c in range(12)} == {(n, d, lr) for n in (3, 4, 5) for d in (1.0, 0.5)
                                                          for lr in (0.001, 0.01)}
    # cells are numbered in itertools.product order, points cell-major then seed
    assert plan.cell_values(1) == (3, 1.0, 0.01) and [plan.seed(i) for i in range(4)] == [0, 1, 2, 0]
    assert plan.spec(3 * 3 + 2).train.lr == 0.01 and plan.spec(3 * 3 + 2).seed == 2

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
    assert single.swept == [] and len(single) == single.seeds == 8 and single.spec(0).data.density == 0.3
    assert make_plan(["experiment=intro", "sweep.name=mine", "debug=smoke"]).name == "mine-smoke"


def test_point_ids_are_stable_and_depend_only_on_settings_and_seed():
    args = ["experiment=intro", "data.density=1.0,0.1", "sweep.seeds=2"]
    a, b = make_plan(args), make_plan(list(reversed(args)))
    assert list(a.point_ids) == list(b.point_ids)
    assert len(set(a.point_ids)) == 4 and a.grid_hash == b.grid_hash
    # execution knobs never change a point
    knobs = make_plan(args + ["sweep.points_per_trial=1", "ray.cpus_per_trial=2", "wandb.mode=disabled",
                              "store=elsewhere", "ray.max_failures=0", "ray.compile=false"])
    assert list(knobs.point_ids) == list(a.point_ids)
    # a setting, or the seed, does
    other = make_plan(args + ["train.lr=0.002"])
    assert not set(other.point_ids) & set(a.point_ids)
    reseeded = make_plan(args + ["sweep.base_seed=7"])
    assert [reseeded.seed(i) for i in range(2)] == [7, 8]
    assert not set(reseeded.point_ids) & set(a.point_ids)
    # the seeds of one cell share its cell_id, different cells do not
    assert len(set(a.cell_ids)) == 2 and len(a.cell_ids) == 2


def test_point_ids_of_schema_version_1_are_pinned():
    """Ids the released code (schema v1) gave these settings; a store written then must resume."""
    for pin in PINS:
        jsons = {g: pts.group_json(g, pin["settings"][g]) for g in pts.POINT_GROUPS}
        assert pts.point_id(jsons, pin["seed"]) == pin["point_id"]
        assert pts.cell_id(jsons) == pin["cell_id"]
    # the same ids from the command line (every setting given, so config defaults cannot move them)
    for pin in PINS:
        overrides = [f"{g}.{k}={json.dumps(v) if isinstance(v, (list, type(None))) else v}"
                     for g in pts.POINT_GROUPS for k, v in pin["settings"][g].items()]
        plan = make_plan(overrides + [f"sweep.base_seed={pin['seed']}", "sweep.seeds=1"])
        assert list(plan.point_ids) == [pin["point_id"]] and list(plan.cell_ids) == [pin["cell_id"]]


def test_every_setting_is_either_a_v1_field_or_has_a_neutral_value():
    """A setting added after schema v1 must say which value leaves existing ids as they were."""
    for group, cls in pts.GROUP_CLASSES.items():
        for name in cls.__dataclass_fields__:
            assert name in pts.ID_FIELDS_V1[group] or f"{group}.{name}" in pts.NEUTRAL, (
                f"{group}.{name}: add it to sweeps.points.NEUTRAL with the value that reproduces the old behaviour")


def test_a_setting_at_its_neutral_value_leaves_the_id_unchanged(monkeypatch):
    pin = PINS[0]
    train = dict(pin["settings"]["train"])
    monkeypatch.setitem(pts.NEUTRAL, "train.later_knob", 0)
    ids = {}
    for value in (None, 0, 3):
        settings = {**pin["settings"], "train": train if value is None else {**train, "later_knob": value}}
        ids[value] = pts.point_id({g: pts.group_json(g, settings[g]) for g in pts.POINT_GROUPS}, pin["seed"])
    assert ids[None] == ids[0] == pin["point_id"], "at its neutral value a new setting is left out of the id"
    assert ids[3] != ids[0], "away from it, it is part of the id"


def test_packing_groups_compatible_points_into_bounded_balanced_trials():
    plan = make_plan(["model.kind=linear,relu_out", "model.n_features=3,5", "data.density=1.0,0.5,0.2",
                      "sweep.seeds=3", "sweep.points_per_trial=4"])
    trials = plan.trials()
    packed = sorted(int(i) for t in trials for i in t.points)
    assert packed == list(range(len(plan)))  # every point exactly once
    for t in trials:
        keys = {toymodels.pack_key(plan.spec(int(i))) for i in t.points}
        assert len(keys) == 1, "a trial mixes points the trainer cannot vectorise"
        assert 1 <= len(t.points) <= 4
    # 4 pack groups of 9 points: 3 trials each, sizes 3/3/3 rather than 4/4/1
    assert len(trials) == 12 and sorted({len(t.points) for t in trials}) == [3]
    assert [t.trial_key for t in plan.trials()] == [t.trial_key for t in trials]
    assert len({t.trial_key for t in trials}) == len(trials)
    # a memory budget makes trials smaller, never mixes packs
    budget = 2 * max(point_bytes(plan.spec(int(t.points[0]))) for t in trials)
    small = plan.trials(max_trial_bytes=budget)
    assert sorted(int(i) for t in small for i in t.points) == list(range(len(plan)))
    assert all(len(t.points) * point_bytes(plan.spec(int(t.points[0]))) <= budget for t in small)
    assert len(small) > len(trials)
    # the payload a worker gets is plain data that rebuilds the same specs
    payload = plan.trial_payload(trials[0])
    rebuilt = [pts.build_spec(pts.cell_settings(payload["base"], payload["swept"], v), s)
               for v, s in zip(payload["values"], payload["seeds"])]
    assert rebuilt == [plan.spec(int(i)) for i in trials[0].points]
    json.dumps(payload)  # plain data only


def test_pack_keys_follow_the_keys_the_trainer_reads_even_when_they_depend_on_values():
    """Packing evaluates pack_key once per combination of the swept keys it reads; the keys it
    reads depend on values (n_sets matters only with a correlation), and the grouping must
    equal pack_key's own on every cell."""
    plan = make_plan(["model.n_features=6", "data.correlation=none,correlated", "data.n_sets=1,2",
                      "data.density=1.0,0.3", "train.lr=0.001,0.002"])
    groups, _ = plan.packing
    keys = [toymodels.pack_key(plan.spec(c * plan.seeds)) for c in range(len(plan.cell_ids))]
    same_group = groups[:, None] == groups[None, :]
    same_key = np.array([[a == b for b in keys] for a in keys])
    assert (same_group == same_key).all()
    assert len(set(groups.tolist())) == 3  # none; correlated with 1 set; correlated with 2 sets
    _, reads = _traced_call(toymodels.pack_key, plan.spec(0))
    assert "data.n_sets" in reads and "data.density" not in reads and "train.lr" not in reads


def test_memory_estimate_grows_with_the_point_and_bounds_what_the_trainer_allocates():
    """point_bytes against the trainer's own peak allocation (torch's CPU allocator stats are
    not available, so a child process training one point measures its peak RSS above the RSS it
    had just before, after a small point has loaded everything the trainer needs)."""
    import subprocess
    import sys

    code = ("import resource, torch, toymodels as t\n"
            "def point(n):\n"
            "    return t.PointSpec(t.ModelConfig('relu_out', n, 8), t.DataConfig(density=0.5), t.TrainConfig("
            "steps=3, batch_size=1024, log_checkpoints=1, linear_checkpoints=1, selection_rows=1024))\n"
            "t.train([point(40)], compile=False)  # imports, threads and lazy set-up out of the way\n"
            "before = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() // 1024\n"
            "t.train([point(4000)], compile=False)\n"
            "print('GROWN', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout
    grown = int(next(line.split()[1] for line in out.splitlines() if line.startswith("GROWN ")))
    spec = make_plan(["model.n_features=4000", "model.n_hidden=8", "train.batch_size=1024"]).spec(0)
    estimate = point_bytes(spec)
    # measured: 293–323 MB alone, 678 MB inside the whole suite (the blocks' threads) for an estimate of 332 MB
    assert grown / 3 <= estimate <= grown * 3, (grown, estimate)
    bigger = make_plan(["model.n_features=8000", "model.n_hidden=8", "train.batch_size=1024"]).spec(0)
    assert point_bytes(bigger) >= 2 * estimate


def test_dry_run_prints_the_plan_and_creates_nothing(store, capsys):
    assert main(["sweep", "--dry-run", f"store={store}", "experiment=intro", "debug=smoke", "ray.num_cpus=2"]) == 0
    out, err = capsys.readouterr()
    assert "sweep intro-smoke: 8 points = 4 cells x 2 seeds in 2 trials" in out
    assert "sweep.points_per_trial=auto, n=5, m=2, batch 1024: 4 per trial, 2 trials: one trial per worker" in err
    assert not store.exists()


def test_a_million_point_grid_is_counted_before_it_is_built(store, capsys):
    """A huge axis is refused by its count; nothing is expanded (this returns at once)."""
    assert main(["sweep", f"store={store}", "data.density=linspace(0.001,1,100000000)"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: sweep.max_points: the grid has 100000000 points, above sweep.max_points=20000; "
                   "pass sweep.max_points=100000000 to confirm\n")
