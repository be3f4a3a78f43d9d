"""Baseline for ``fedsynth meta --by``: DerSimonian-Laird per group in pandas + numpy.

The 20-line pipeline a user would write instead of the command line (issue 17): read
the CSV, group by ``analysis``, the DL estimate, its standard error and 95% CI, Q, I²
and tau² of every group, write a CSV. No REML, no Q-profile, no prediction interval, no
heterogeneity flag. ``python benchmarks/batch_baseline.py IN.csv OUT.csv``.
"""

import sys

import numpy as np
import pandas as pd

d = pd.read_csv(sys.argv[1])
d["w"] = 1.0 / d["vi"]
d["wy"], d["wy2"], d["w2"] = d["w"] * d["yi"], d["w"] * d["yi"] ** 2, d["w"] ** 2
g = d.groupby("analysis", sort=False)[["w", "wy", "wy2", "w2", "yi"]]
s = g.sum()
k = g.size().to_numpy()
Q = (s["wy2"] - s["wy"] ** 2 / s["w"]).to_numpy()
tau2 = np.maximum(0.0, (Q - (k - 1)) / (s["w"] - s["w2"] / s["w"]).to_numpy())
d["ws"] = 1.0 / (d["vi"] + np.repeat(tau2, k)[d.groupby("analysis", sort=False).ngroup()])
d["wsy"] = d["ws"] * d["yi"]
r = d.groupby("analysis", sort=False)[["ws", "wsy"]].sum()
est, se = (r["wsy"] / r["ws"]).to_numpy(), np.sqrt(1.0 / r["ws"]).to_numpy()
i2 = np.where(Q > 0, np.maximum(0.0, (Q - (k - 1)) / Q) * 100, 0.0)
pd.DataFrame({"analysis": r.index, "k": k, "estimate": est, "se": se,
              "ci_lb": est - 1.959963984540054 * se, "ci_ub": est + 1.959963984540054 * se,
              "tau2": tau2, "Q": Q, "I2": i2}).to_csv(sys.argv[2], index=False)
