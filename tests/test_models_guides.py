"""Every shipped mixture works with every guide family, through the generic E-step alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.em import fit
from inference.guides import parse_guide
from inference.mstep import has_closed_form
from models import MODELS


def sample(name: str, n: int = 90) -> torch.Tensor:
    """(n, 3) data in the support of the CLI model ``name``."""
    rng = np.random.default_rng(0)
    labels = rng.integers(3, size=n)
    if name in ("gmm", "restricted-gmm"):
        x = rng.standard_normal((n, 3)) + 5 * np.eye(3)[labels]
    elif name == "bernoulli":
        x = (rng.random((n, 3)) < 0.2 + 0.6 * np.eye(3)[labels]).astype(float)
    elif name == "poisson":
        x = rng.poisson(1 + 6 * np.eye(3)[labels]).astype(float)
    elif name == "categorical":
        x = np.column_stack([rng.integers(c, size=n) for c in (2, 4, 3)]).astype(float)
        x[:, 1] = np.where(rng.random(n) < 0.7, labels, x[:, 1])
    else:
        x = rng.standard_normal((n, 3)) + 3 * np.eye(3)[labels]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.tensor(x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_guide_family_fits_every_model(name):
    x = sample(name)
    for spec in ("delta", "categorical", "tempered:0.5", "topk:2", "sampled"):
        model = MODELS[name].from_centres(x[:3].clone(), x)
        assert has_closed_form(model)
        result = fit(model, x, parse_guide(spec, 3), max_iter=4, tol=0)
        elbos = np.array([r.elbo for r in result.trace])
        assert np.isfinite(elbos).all() and len(result.labels) == len(x)
        if spec in ("delta", "categorical"):  # exact E- and M-steps: the ELBO never drops
            assert np.all(np.diff(elbos) >= -1e-9 * np.abs(elbos[1:]))
        assert elbos[-1] > elbos[0]
