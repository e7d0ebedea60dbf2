"""A mixture mixem does not ship, written here, fits through the generic machinery alone.

The mixture of exponentials below has no closed-form M-step, so every fit goes through the
gradient M-step (L-BFGS on Pyro's exact ELBO with the guide held fixed); the E-step, ELBO and
trace come from enumeration of its site "z", with no model-specific code in ``inference/``.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from inference.em import fit
from inference.guides import parse_guide
from inference.mstep import has_closed_form

README = Path(__file__).resolve().parents[1] / "README.md"


class ExponentialMixture(PyroModule):
    """weights (K,) and rates (K, D) of independent exponentials per feature."""

    def __init__(self, rates: Tensor) -> None:
        super().__init__()
        K = rates.shape[0]
        self.weights = PyroParam(rates.new_full((K,), 1 / K), constraint=constraints.simplex)
        self.rates = PyroParam(rates.clone(), constraint=constraints.positive)
        self.n_components = K

    def forward(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(self.weights))
            pyro.sample("x", dist.Exponential(self.rates[z]).to_event(1), obs=x)


TRUE_RATES = torch.tensor([[0.5, 4.0], [5.0, 0.4]], dtype=torch.float64)


def exponential_data(n: int, seed: int) -> Tensor:
    """(n, 2) points from the two components of TRUE_RATES, 60% from the first."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) > 0.6).long()
    unit = -torch.log1p(-torch.rand(n, 2, generator=g, dtype=torch.float64))  # Exp(1)
    return unit / TRUE_RATES[labels]


GUIDES = ["delta", "categorical", "tempered:0.5", "topk:1", "sampled"]


@pytest.mark.parametrize("spec", GUIDES)
def test_unknown_mixture_fits_with_every_guide(spec):
    x = exponential_data(300, seed=0)
    model = ExponentialMixture(torch.tensor([[1.0, 1.5], [1.5, 1.0]], dtype=torch.float64))
    assert not has_closed_form(model)
    result = fit(model, x, parse_guide(spec, 2), max_iter=6, tol=0)
    assert result.n_iter == 6 or result.stop_reason == "assignments unchanged"  # hard: fixed point
    evidence = [r.log_evidence for r in result.trace]
    elbos = np.array([r.elbo for r in result.trace])
    assert np.isfinite(elbos).all() and np.isfinite(evidence).all()
    assert evidence[-1] > evidence[0] + 10  # the fit moved towards the data
    if spec in ("delta", "categorical"):  # exact E- and M-steps never decrease the ELBO
        assert np.all(np.diff(elbos) >= -1e-7 * np.abs(elbos[1:]))
    if spec == "categorical":  # the exact guide recovers the generating rates
        rates = model.rates.detach()
        rates = rates[rates[:, 0].argsort()]
        torch.testing.assert_close(rates, TRUE_RATES, rtol=0.25, atol=0)


def readme_examples() -> list[str]:
    """The Python blocks of README's "Add your own mixture" section: a plain Pyro exponential
    family mixture, then a Laplace mixture (outside the table of families)."""
    text = README.read_text()
    section = text.split("## Add your own mixture", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 2, "the section should hold the two Python examples"
    return blocks


def test_readme_examples_run_and_print_an_elbo_trace(capsys):
    family, generic = readme_examples()
    assert len(family.strip().splitlines()) < 40 and len(generic.strip().splitlines()) < 30
    namespace = {"__name__": "readme_example"}
    exec(compile(family, str(README), "exec"), namespace)
    first = capsys.readouterr().out.splitlines()
    assert first[0] == "exponential"  # read as a family: the fused pass
    means = namespace["model"].rates.detach().reciprocal()  # (2, 2): populations of mean 6, 1
    torch.testing.assert_close(
        means.sort(0).values[:, 0], torch.tensor([1.0, 6.0]).double(), rtol=0.1, atol=0
    )
    exec(compile(generic, str(README), "exec"), namespace)
    lines = [line for line in capsys.readouterr().out.splitlines() if "ELBO" in line]
    elbos = [float(line.split("ELBO")[1].split()[0]) for line in lines]
    assert len(elbos) >= 3 and all(math.isfinite(e) for e in elbos)
    assert all(b >= a - 1e-6 * abs(a) for a, b in itertools.pairwise(elbos))
