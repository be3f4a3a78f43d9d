"""Write ``trauma_registry.csv``: the reference registry that ``reference.R`` fits.

Run once from the repository root (``python tests/data/models/make_registry.py``); the CSV
is committed and tests read it (never this script). Eight MTFs of the synthetic trauma
registry (:func:`fedsynth.datasets.generate_trauma_site`, seed 13, high heterogeneity) with
sizes 900 down to 180, and one deliberate gap: the smallest site has no patient of Marshall
CT class ``IV/V`` (its rows are removed), so that site's own fit has an aliased coefficient
(R: ``NA``) and the pooled analyses of ``ct=IV/V`` rest on seven sites.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.datasets import generate_trauma_site, trauma_parameters

SIZES = (900, 700, 550, 450, 350, 280, 220, 180)
SEED = 13


def registry() -> pd.DataFrame:
    params = trauma_parameters(len(SIZES), seed=SEED, heterogeneity="high")
    frames = []
    for i, (p, rows) in enumerate(zip(params, SIZES)):
        frame = generate_trauma_site(replace(p, rows=rows), np.random.default_rng([SEED, 8, i]))
        if i == len(SIZES) - 1:
            frame = frame[frame["ct"] != "IV/V"]
        frames.append(frame.drop(columns="patient_id").assign(site=p.name))
    out = pd.concat(frames, ignore_index=True)
    return out[["site", *[c for c in out.columns if c != "site"]]]


if __name__ == "__main__":
    target = Path(__file__).with_name("trauma_registry.csv")
    registry().to_csv(target, index=False)
    print(target)
