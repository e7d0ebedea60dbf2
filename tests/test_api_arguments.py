"""``inference.em.fit``'s arguments of the wrong type or shape: a ``MixemError`` saying what to
pass, before anything runs (not a torch error from inside the loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.em import fit
from inference.errors import MixemError
from inference.guides import Anneal, Delta, parse_guide
from models import RestrictedGMM

X = torch.tensor([[0.0, 0.0], [0.1, 0.2], [5.0, 5.0], [5.1, 4.9], [9.0, 0.0], [9.2, 0.1]])
X = X.double()


def _model() -> RestrictedGMM:
    return RestrictedGMM(X[::2].clone())


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"x": X.numpy()}, r"x must be a torch.Tensor .* got ndarray; convert it with torch"),
        ({"x": X.tolist()}, "x must be a torch.Tensor .* got list"),
        ({"x": torch.tensor(1.0, dtype=torch.float64)}, "got 0-D with shape \\(\\)"),
        ({"x": X[:, 0]}, "data must be a 2-D array .* got 1-D with shape \\(6,\\); reshape"),
        ({"x": X[None]}, "got 3-D with shape \\(1, 6, 2\\)"),
        ({"model": "restricted-gmm"}, "model must be a mixture model .* got str"),
        ({"guide": "delta"}, "got the string 'delta'; use inference.guides.parse_guide"),
        ({"guide": Delta}, "got the class Delta; use Delta\\(...\\)"),
        ({"guide": 3}, "guide must be a guide family .* got int"),
        ({"guide": lambda i: "delta"}, "schedule must return a guide family .* got str"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer, got 0"),
        ({"chunk_size": 10.0}, "chunk_size must be a positive integer, got 10.0"),
        ({"chunk_size": True}, "chunk_size must be a positive integer, got True"),
        ({"max_iter": 2.0}, "max_iter must be an integer >= 0, got 2.0"),
        ({"max_iter": True}, "max_iter must be an integer >= 0, got True"),
        ({"max_iter": -1}, "max_iter must be an integer >= 0, got -1"),
        ({"tol": "x"}, "tol must be a finite number >= 0, got 'x'"),
        ({"tol": float("nan")}, "tol must be a finite number >= 0, got nan"),
        ({"tol": float("inf")}, "tol must be a finite number >= 0, got inf"),
        ({"tol": -1e-3}, "tol must be a finite number >= 0"),
        ({"tol": False}, "tol must be a finite number >= 0, got False"),
        ({"callback": 3}, "callback must be a function or None, got int"),
        ({"should_stop": "no"}, "should_stop must be a function or None, got str"),
    ],
)
def test_wrong_argument_is_a_mixem_error(changes, match):
    args = {"model": _model(), "x": X, **changes}
    with pytest.raises(MixemError, match=match):
        fit(args.pop("model"), args.pop("x"), **args)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"guide": Delta()},
        {"guide": parse_guide("categorical", 3)},
        {"guide": Anneal(2.0, 1.0, 3)},  # a schedule
        {"guide": lambda i: Delta()},
        {"max_iter": np.int64(3), "tol": np.float32(1e-3), "chunk_size": np.int64(4)},
        {"max_iter": 0, "tol": 0, "callback": print, "should_stop": lambda: False},
    ],
)
def test_the_arguments_fit_takes_still_fit(changes, capsys):
    result = fit(_model(), X, **changes)
    assert result.labels.shape == (6,)
