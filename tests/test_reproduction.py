"""Acceptance tests: the paper's claims (paper.md E1-E11) as the paper states them, at reduced
but meaningful scale.

Each test trains one pack of models with the trainer (fixed seeds; best of N by the selection
loss, which scores every seed of a setting on the same large evaluation set) and reads the
result with the analysis functions `tms analyze` uses. Each docstring gives the scale and why
the claim holds reliably there (checked over other base seeds before fixing this one).
docs/reproduction.md gives the same claims at the experiments' full settings.
"""

import numpy as np
import pytest

from analysis.energy import LEVELS, ZERO, assign_levels, chance_on_level, masked_dimensionality, tolerances
from analysis.geometry import describe, label, tegum_factors
from analysis.neurons import count_neurons, neuron_features
from analysis.phase import analytic_label, boundary_distance, classify_extra, lower_boundary, upper_boundary
from analysis.timeline import detect
from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, train

LEARNED = 0.5  # ‖W_i‖ above which a feature counts as learned (analysis default)
TOL = tolerances(0.05, 0.4)  # the analysis' per-level tolerances
HALF = [lv.text for lv in LEVELS].index("1/2")


def fit(steps: int, batch: int = 512, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, log_checkpoints=kw.pop("log", 3),
                       linear_checkpoints=kw.pop("linear", 2), **kw)


def best(result, idx) -> int:
    """The instance among ``idx`` with the lowest selection loss (the paper's best of N)."""
    idx = list(idx)
    return idx[int(np.argmin(result.selection_loss[idx]))]


def geometry(W) -> str:
    return label(W, LEARNED)


def cosines(W) -> np.ndarray:
    Wn = W / np.linalg.norm(W, axis=0)
    return Wn.T @ Wn


# ----------------------------------------------------------------------------- E1 intro

def test_intro_dense_dedicated_then_two_pairs_dropping_the_fifth_then_a_pentagon():
    """E1 at the paper's n=5, m=2, I=0.9^i, 6,000 steps, best of 8 by selection loss.

    Dense: features 0 and 1 dedicated, the rest dropped. Density 0.25 (the paper's "≈0.2";
    here the pairs→pentagon switch sits between 0.26 and 0.19): features 0–3 as two antipodal
    pairs and feature 4, the least important, dropped. Density 0.05: a pentagon. Reliable: at
    0.25 about half of all seeds drop feature 4 (7 of 12 in a 12-seed run) and on a shared
    evaluation set that solution is the lowest (0.0158 against 0.0166 for dropping feature 3,
    0.0177 for feature 2); each seed's own 1,024-row batch could not tell them apart.
    """
    seeds, dens = 8, (1.0, 0.25, 0.05)
    pts = [PointSpec(ModelConfig("relu_out", 5, 2), DataConfig(density=d, importance_decay=0.9),
                     fit(6000, batch=1024), seed=s) for d in dens for s in range(seeds)]
    r = train(pts, compile=False)
    dense, pairs, sparse = (best(r, range(k * seeds, (k + 1) * seeds)) for k in range(3))
    norm, dim = r.final.norm, r.final.dimensionality
    assert geometry(r.W[dense]) == "dedicated ×2 + not learned ×3"
    assert (norm[dense][:2] > 0.9).all() and (dim[dense][:2] > 0.9).all() and (norm[dense][2:] < 0.3).all()
    assert geometry(r.W[pairs]) == "antipodal pair ×2 + not learned ×1"
    assert norm[pairs][4] < 0.2 and (norm[pairs][:4] > 0.9).all(), norm[pairs]       # the fifth dropped
    c = cosines(r.W[pairs][:, :4])
    partner = np.argmin(c, axis=1)
    assert (partner[partner] == np.arange(4)).all() and (c.min(axis=1) < -0.95).all(), c   # two pairs
    other = [j for j in range(4) if j not in (0, partner[0])]
    assert np.abs(c[[0, partner[0]]][:, other]).max() < 0.1, c                              # orthogonal
    assert geometry(r.W[sparse]) == "pentagon ×1"


# ----------------------------------------------------------------------------- E2 basic results

def test_superposition_takes_the_least_important_features_first_and_grows_as_density_falls():
    """E2 at the paper's n=20, m=5, I=0.7^i, relu_out, densities 1, 0.3, 0.1, 0.03, best of 3,
    4,000 steps.

    Dense: the five most important features, each dedicated, nothing in superposition. As density
    falls more features are represented (5, 7, 9, 10 in the runs that fixed this scale) and
    superposition (interference Σ_{j≠i}(Ŵ_i·W_j)² ≥ 0.1) takes the least important represented
    features first: at every density the dedicated features are the most important ones and the
    superposed ones the rest, until all are superposed. Reliable: every seed of those runs but
    one (a 0.3 seed with features 2 and 4 swapped, not the lowest loss) had this order.
    """
    seeds, dens = 3, (1.0, 0.3, 0.1, 0.03)
    pts = [PointSpec(ModelConfig("relu_out", 20, 5), DataConfig(density=d, importance_decay=0.7),
                     fit(4000, batch=1024), seed=s) for d in dens for s in range(seeds)]
    r = train(pts, compile=False)
    represented, superposed = [], []
    for k, d in enumerate(dens):
        i = best(r, range(k * seeds, (k + 1) * seeds))
        rep = np.flatnonzero(r.final.norm[i] > LEARNED)
        sup = rep[r.final.interference[i][rep] >= 0.1]
        ded = np.setdiff1d(rep, sup)
        assert ded.size == 0 or sup.size == 0 or ded.max() < sup.min(), (d, ded, sup)  # least important first
        represented.append(rep.size)
        superposed.append(sup.size)
    assert represented[0] == 5 and superposed[0] == 0
    assert all(a <= b for a, b in zip(represented, represented[1:])) and represented[-1] >= 9, represented
    assert all(a <= b for a, b in zip(superposed, superposed[1:])) and 0 < superposed[1], superposed


# ----------------------------------------------------------------------------- E3, E4 phase diagrams

def phase_cells(n: int, m: int, cells, seeds: int, steps: int):
    """Train ``seeds`` models per (s, r) cell; per cell: s, r, the best seed's label, theory, distance."""
    pts = [PointSpec(ModelConfig("relu_out", n, m), DataConfig(density=s, extra_importance=r), fit(steps), seed=k)
           for s, r in cells for k in range(seeds)]
    res = train(pts, compile=False)
    out = []
    for c, (s, r) in enumerate(cells):
        i = best(res, range(c * seeds, (c + 1) * seeds))
        label_ = classify_extra(res.final.norm[i][-1], res.final.interference[i][-1], LEARNED, 0.25)
        out.append((s, r, str(label_), str(analytic_label(n, m, [s], [r])[0]),
                    float(boundary_distance(n, m, [s], [r])[0])))
    return out


def test_phase_n2m1_cells_a_factor_1_5_from_the_boundaries_get_the_analytic_phase():
    """E3 (n=2, m=1): at densities 0.3 and 0.45 (inside (0.16, 0.57), where the superposition
    wedge 2s/(4−5s) < r < (4−5s)/(2s) is narrowest), the cells a factor 1.5 below and above each
    boundary — on both sides of both curves — have the analytic phase. Best of 8 by selection
    loss, 3,000 steps. Reliable: in the four cells inside the wedge 3 or 4 of 8 seeds land in a
    wrong phase (local minima), and the selection loss picks a right one in all 8 cells."""
    cells = []
    for s in (0.3, 0.45):
        lo, hi = lower_boundary(s), upper_boundary(s)
        cells += [(s, lo / 1.5), (s, lo * 1.5), (s, hi / 1.5), (s, hi * 1.5)]
    got = phase_cells(2, 1, cells, seeds=8, steps=3000)
    assert [c[3] for c in got] == ["not_learned", "superposition", "superposition", "dedicated"] * 2
    wrong = [c for c in got if c[2] != c[3]]
    assert not wrong, wrong


@pytest.mark.slow
def test_phase_n3m2_agrees_with_theory_off_the_boundaries():
    """E4 (n=3, m=2): a 4 × 4 grid (s ∈ {1, 0.3, 0.1, 0.03}, r ∈ {0.1, 0.3, 3, 10}), best of 8
    by selection loss, 3,000 steps: at least 95 % of the cells farther than 0.15 decades from a
    boundary (15 of 16 here) have the analytic phase, and all three phases occur. Reliable: all
    15 agree in the run that fixed it; ranked by each seed's own final loss one did not (s=0.03,
    r=3, where half the seeds take the superposition local minimum)."""
    cells = [(s, r) for s in (1.0, 0.3, 0.1, 0.03) for r in (0.1, 0.3, 3.0, 10.0)]
    got = phase_cells(3, 2, cells, seeds=8, steps=3000)
    away = [c for c in got if c[4] > 0.15]
    assert len(away) >= 15
    agree = np.mean([c[2] == c[3] for c in away])
    assert agree >= 0.95, [c for c in away if c[2] != c[3]]
    assert {c[3] for c in away} == {"not_learned", "dedicated", "superposition"}


# ----------------------------------------------------------------------------- E7 correlation

@pytest.mark.parametrize("kind", ["correlated", "anticorrelated"])
def test_correlated_features_go_orthogonal_anticorrelated_antipodal(kind):
    """E7: two sets of two features in m=2: correlated members orthogonal, anticorrelated antipodal."""
    seeds = 4
    pts = [PointSpec(ModelConfig("relu_out", 4, 2), DataConfig(density=0.1, correlation=kind, n_sets=2, set_size=2),
                     fit(3000), seed=s) for s in range(seeds)]
    r = train(pts, compile=False)
    i = best(r, range(seeds))
    W = r.W[i]
    assert (r.final.norm[i] > 0.8).all(), r.final.norm[i]
    c = cosines(W)
    within = np.array([c[0, 1], c[2, 3]])
    if kind == "correlated":
        assert (np.abs(within) < 0.1).all(), c                         # members of a set orthogonal
    else:
        assert (within < -0.95).all(), c                                # members of a set antipodal


# ----------------------------------------------------------------------------- E6 non-uniform pentagon

@pytest.mark.slow
def test_pentagon_collapses_to_digons_when_one_feature_is_much_sparser():
    """E6: density 0.05, all importances 1; the last feature's density is scaled by e.

    Pentagon and two antipodal pairs (the sparse feature dropped) are both local minima (a
    first-order transition): each seed lands in one of them. Best of 12 per value, and the
    lowest selection loss of each geometry family: the pentagon wins when the feature is as dense
    as the rest, the digons win when it is 5x sparser, and the families' loss curves cross in
    between.
    """
    seeds, eds = 12, (1.0, 0.2)
    pts = [PointSpec(ModelConfig("relu_out", 5, 2), DataConfig(density=0.05, extra_density=e), fit(5000, batch=1024),
                     seed=s) for e in eds for s in range(seeds)]
    r = train(pts, compile=False)
    family_best = {}
    for k, e in enumerate(eds):
        idx = range(k * seeds, (k + 1) * seeds)
        for i in idx:
            g = geometry(r.W[i])
            family_best.setdefault((e, g), []).append(float(r.selection_loss[i]))
        winner = geometry(r.W[best(r, idx)])
        if e == 1.0:
            assert winner == "pentagon ×1", winner
        else:
            assert winner == "antipodal pair ×2 + not learned ×1", winner
            i = best(r, idx)
            assert r.final.norm[i][-1] < 0.2                                   # the sparse feature dropped
    pent, digon = "pentagon ×1", "antipodal pair ×2 + not learned ×1"
    gap = {e: min(family_best.get((e, pent), [np.inf])) - min(family_best.get((e, digon), [np.inf])) for e in eds}
    assert gap[1.0] < 0 < gap[0.2], gap                                         # the families' losses cross


# ----------------------------------------------------------------------------- E10, E11 neurons

def test_privileged_basis_monosemantic_when_dense_polysemantic_when_sparse():
    """E10: relu_hidden, n=10, m=5, I=0.75^i: density 1 gives five monosemantic neurons (one
    feature each, the top five); density 0.03 packs most features into polysemantic neurons."""
    seeds, dens = 4, (1.0, 0.03)
    pts = [PointSpec(ModelConfig("relu_hidden", 10, 5), DataConfig(density=d, importance_decay=0.75), fit(10_000),
                     seed=s) for d in dens for s in range(seeds)]
    r = train(pts, compile=False)
    dense, sparse = best(r, range(seeds)), best(r, range(seeds, 2 * seeds))
    c = count_neurons(r.W[dense], "relu_hidden")
    assert (c.monosemantic, c.polysemantic) == (5, 0), c
    assert (r.final.norm[dense][:5] > 0.9).all() and (r.final.norm[dense][6:] < 0.2).all()
    c = count_neurons(r.W[sparse], "relu_hidden")
    assert c.polysemantic >= 4 and c.monosemantic <= 1, c
    assert (r.final.norm[sparse] > LEARNED).sum() >= 8                  # more features than neurons


def test_abs_value_monosemantic_when_dense_polysemantic_when_sparse():
    """E11 at n=20, m=8 (the paper: n=100, m=40), I=0.8^i: every neuron monosemantic at
    density 1, every neuron polysemantic at 0.01."""
    dens = (1.0, 0.01)
    pts = [PointSpec(ModelConfig("abs", 20, 8), DataConfig(density=d, importance_decay=0.8), fit(4000), seed=s)
           for d in dens for s in range(2)]
    r = train(pts, compile=False)
    dense, sparse = best(r, range(2)), best(r, range(2, 4))
    assert count_neurons(r.W[dense], "abs").monosemantic == 8
    assert count_neurons(r.W[sparse], "abs").polysemantic == 8
    # dense: the eight neurons serve the most important features (each one its own)
    served = np.flatnonzero(neuron_features(r.W[dense], "abs").any(axis=0))
    assert served.max() < 10, served


# ----------------------------------------------------------------------------- E8 learning dynamics

def dynamics(data: DataConfig, init_scale: float, seeds: int, steps: int = 5000):
    """Train n=6, m=3 models from small initial weights with dense checkpoints; per seed its
    timeline, with the geometry label of W at every checkpoint."""
    cfg = TrainConfig(steps=steps, init_scale=init_scale, log_checkpoints=60, linear_checkpoints=20)
    pts = [PointSpec(ModelConfig("relu_out", 6, 3), data, cfg, seed=s) for s in range(seeds)]
    cks = []
    r = train(pts, compile=False, callback=cks.append)
    steps_ = np.array([c.step for c in cks])
    loss = np.stack([c.loss for c in cks])
    D, norm = np.stack([c.dimensionality for c in cks]), np.stack([c.norm for c in cks])
    timelines = []
    for i in range(seeds):
        labels = [geometry(c.W[i]) for c in cks]
        timelines.append(detect(steps_, loss[:, i], steps_, D[:, i], norm[:, i], LEARNED, TOL,
                                label_steps=steps_, labels=labels))
    return r, timelines, np.stack([c.W for c in cks])


def test_dynamics_digons_drop_at_level_jumps():
    """E8a: uniform importance, n=6, m=3, density 0.2, W started at 0.01 × the Xavier std (the
    paper's notebook starts far below a per-model Xavier; from 1.0 the loss falls in one smooth
    drop, docs/reproduction.md), 5,000 steps, 8 seeds.

    The seed with the lowest selection loss ends as three antipodal pairs (D_i = 1/2) and passes
    through two or more loss drops, as do at least 7 of the 8 seeds (8 of 8 in the run that
    fixed this setting, 7 of 8 at init 0.03); at every drop of every seed the geometry changes —
    a feature's D_i jumps between energy levels, W's label changes, or a settled D_i moves by
    0.1 inside the drop's window. The jumps are real level moves: in at least 3 seeds features
    leave a settled nonzero level (dedicated, triangle) for 1/2.
    """
    seeds = 8
    r, timelines, _ = dynamics(DataConfig(density=0.2), init_scale=0.01, seeds=seeds)
    chosen = best(r, range(seeds))
    assert geometry(r.W[chosen]) == "antipodal pair ×3"
    assert len(timelines[chosen].drops) >= 2
    for i, tl in enumerate(timelines):
        assert tl.drops and tl.unmatched_drops == [], (i, tl.drops, tl.drop_jumps)
    assert sum(len(tl.drops) >= 2 for tl in timelines) >= 7, [len(tl.drops) for tl in timelines]
    left = [i for i, tl in enumerate(timelines)
            if any(not t.learned and t.src != ZERO and t.dst == HALF for t in tl.transitions)]
    assert len(left) >= 3, [[(t.src, t.dst) for t in tl.transitions] for tl in timelines]


def test_dynamics_correlated_sets_collapse_then_spread_into_an_octahedron():
    """E8b: n=6, m=3, two sets of three correlated features, density 0.1, W started at 0.1 × the
    Xavier std, 10,000 steps, 8 seeds.

    Training passes through plateaus, each ending in a geometric transformation: every seed has
    two or more drops, and at each the geometry changes (a level jump, a new label of W, or a
    settled feature's D_i moving by ≥ 0.1 — here D_i drift between levels rather than jump). The
    first drop reaches the PCA-like regime: the plateau after it uses fewer than 3 dimensions
    (each set collapsed onto one direction, "3 in 1 ×2", or all six in a plane). Every seed ends
    in the attractor, an octahedron (three antipodal pairs) whose pairs each join one feature
    of each set. Reliable: 8 of 8 seeds in the runs that fixed this setting."""
    seeds = 8
    r, timelines, Ws = dynamics(DataConfig(density=0.1, correlation="correlated", n_sets=2, set_size=3),
                                init_scale=0.1, seeds=seeds, steps=10_000)
    for i, tl in enumerate(timelines):
        assert geometry(r.W[i]) == "antipodal pair ×3", i
        c = cosines(r.W[i])
        partner = np.argmin(c, axis=1)
        assert (c[np.arange(6), partner] < -0.95).all() and ((np.arange(6) < 3) != (partner < 3)).all(), c
        assert len(tl.drops) >= 2 and tl.unmatched_drops == [], (i, len(tl.drops), tl.drop_jumps)
        sv = np.linalg.svd(Ws[tl.drops[0].after, i], compute_uv=False)      # the plateau after drop 1
        assert (sv > 0.25 * sv[0]).sum() < 3, (i, sv)                        # features in < 3 dimensions


# ----------------------------------------------------------------------------- E5 uniform superposition

def test_uniform_superposition_d_star_sticks_at_one_half_with_features_on_energy_levels():
    """E5 at n=100, m=10 (the paper: n=400, m=30; n/m = 10 against 13), all importances 1, the
    experiment's grid of ten densities per decade from 1/(1−S) = 2 to 5, 4,000 steps, best of 4
    by selection loss.

    D* sticks at 1/2: it stays within ±0.05 of 1/2 over at least three consecutive densities
    (here 1/(1−S) = 2.5, 3.2, 4.0: D* = 0.525, 0.517, 0.489) and leaves it on both sides (0.56 at
    2.0, 0.36 at 5.0). At the plateau the learned features' D_i sit on the energy levels far more
    often than random W puts them there (k Gaussian columns in the same m, k the learned count:
    ~24 % for 20 in 10) — at least 90 % on a level against chance + 50 points — and those
    features are in named polytopes (antipodal pairs), not "k in d" tangles. Reliable: the full
    experiment (n=400, m=30, 31 densities) and n=200, m=20 give the same plateau (1/(1−S) from
    about 2.3 to 4.1, docs/reproduction.md); every seed here reads 0.525 and 0.517 at the two
    inner densities, and 0.45–0.49 at 4.0, where best of 4 picks the fewest pentagons (0.489)."""
    seeds, inverse = 4, [10 ** (k / 10) for k in range(3, 8)]          # 1/(1−S) = 2.0 … 5.0
    dens = [float(f"{1 / x:.10g}") for x in inverse]
    pts = [PointSpec(ModelConfig("relu_out", 100, 10), DataConfig(density=d), fit(4000, batch=1024), seed=s)
           for d in dens for s in range(seeds)]
    r = train(pts, compile=True)
    chosen = [best(r, range(k * seeds, (k + 1) * seeds)) for k in range(len(dens))]
    d_star = r.final.d_star[chosen]
    near = np.abs(d_star - 0.5) <= 0.05
    run = longest = 0
    for ok in near:
        run = run + 1 if ok else 0
        longest = max(longest, run)
    assert longest >= 3, d_star
    assert d_star[0] > d_star[1] and d_star[-1] < 0.45, d_star                # a plateau, not a constant
    assert d_star[0] < 0.75                                                   # dense side: well below 1
    for k in np.flatnonzero(near):
        i = chosen[k]
        D = masked_dimensionality(r.final.dimensionality[i], r.final.norm[i], LEARNED)
        learned = D > 0
        on = assign_levels(D[learned], TOL)
        on_level = float(np.mean((on >= 0) & (on != ZERO)))
        chance = chance_on_level(10, int(learned.sum()), 0.05, 0.4)
        assert on_level >= 0.9 and on_level >= chance + 0.5, (dens[k], on_level, chance)
        factors, _ = tegum_factors(r.W[i], LEARNED)
        named = sum(f.k for f in factors if " in " not in f.name)
        assert named >= 0.9 * learned.sum(), describe(factors, 0)
