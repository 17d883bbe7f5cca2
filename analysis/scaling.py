"""Loss against width (Liu, Liu & Gore 2025): the log-log slope of the test loss against m.

For a sweep over ``model.n_hidden`` with power-law feature frequencies: per setting of the other swept keys (e.g. the weight decay
that selects weak or strong superposition), the best seed's test loss (the selection loss) at
each m, a least-squares line through log loss against log m, and its slope beside the paper's
claim: ≈ −1 under strong superposition, whatever the feature-frequency law. Reads the store only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import plots
from .figures import Figure, facet_title, facets

M_KEY = "model.n_hidden"
LAW_KEY = "data.density_exponent"
"""The figure is drawn for sweeps over m whose feature frequencies follow a power law."""
CLAIM = -1.0
"""The paper's slope of log loss against log m under strong superposition."""


def slopes(run) -> pd.DataFrame | None:
    """Per facet (the other swept keys): the fitted slope, its standard error and the points used."""
    law = run.pts.get(LAW_KEY)
    if M_KEY not in run.swept or law is None or not (law.astype(float) > 0).all():
        return None
    keys = [k for k in run.swept if k != M_KEY]
    rows = []
    for facet, sub in facets(run.pts, keys):
        best = sub.sort_values("selection_loss").groupby(M_KEY).head(1).sort_values(M_KEY)
        x, y = np.log(best[M_KEY].to_numpy(float)), np.log(best["selection_loss"].to_numpy(float))
        if len(x) < 2:
            continue
        (slope, icpt), cov = np.polyfit(x, y, 1, cov=len(x) > 2) if len(x) > 2 else (np.polyfit(x, y, 1), None)
        se = float(np.sqrt(cov[0, 0])) if cov is not None else float("nan")
        rows.append({"facet": facet, "slope": float(slope), "intercept": float(icpt), "slope_se": se,
                     "m": best[M_KEY].to_numpy(float), "loss": best["selection_loss"].to_numpy(float)})
    return pd.DataFrame(rows)


def draw(run, out: str) -> list[Figure]:
    fits = slopes(run)
    if fits is None or fits.empty:
        return []
    fc = run.cfg.figures
    fig = plots.new_figure(6.5, 4.5)
    ax = fig.subplots()
    for k, row in fits.iterrows():
        label = (facet_title(row["facet"]) or "all") + f": slope {row['slope']:.2f} ± {row['slope_se']:.2f}"
        ax.plot(row["m"], row["loss"], "o", color=f"C{k}", label=label)
        ax.plot(row["m"], np.exp(row["intercept"]) * row["m"] ** row["slope"], "-", color=f"C{k}", lw=1)
    m = np.concatenate(fits["m"].to_list())
    ref = fits["loss"].iloc[0][0] * (m.min() / np.sort(m))
    ax.plot(np.sort(m), ref, "k:", lw=1, label="slope −1 (the paper's strong superposition)")
    ax.set(xscale="log", yscale="log", xlabel="hidden dimensions m", ylabel="test loss (best seed)")
    ax.legend(fontsize=8)
    title = f"{run.store.name}: loss against width"
    ax.set_title(title)
    return [Figure("scaling", title, plots.save(fig, out, "scaling", fc.formats, fc.dpi))]
