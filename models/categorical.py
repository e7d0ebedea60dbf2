"""Mixture of products of categoricals, for integer-coded features.

    z_i ~ Categorical(weights)
    x_id | z_i = c ~ Categorical(probs[c, d, :n_categories[d]])     independently over features

Feature d takes the values 0 .. n_categories[d] - 1. ``probs`` is (K, D, C) with C the largest
number of categories; a feature with fewer has its row padded with exact zeros, which its data
never index. Like the Bernoulli mixture (the case C = 2), the M-step floors each category's
probability at PROB_FLOOR (then renormalises), so a category unseen in a component is unlikely
there, never impossible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from inference.errors import MixemError
from models.common import (
    init_weights,
    is_whole,
    keep_where_empty,
    mixing_prior,
    reject_rows,
    safe_counts,
    update_weights,
)

PROB_FLOOR = 1e-10


class CategoricalMixture(PyroModule):
    """Parameters ``weights`` (K,) and ``probs`` (K, D, C), zero beyond each feature's categories.

    Args:
        probs: (K, D, C) initial probabilities; each (c, d) row sums to 1 over the feature's
            categories and is 0 beyond them.
        n_categories: D numbers of categories (each >= 1 and <= C); all C when ``None``.
        weights: (K,) initial weights, uniform when ``None``.
        learn_weights: False keeps the weights fixed.
    """

    weights: Tensor
    probs: Tensor

    # constructor keywords the CLI passes (see inference.model_init)
    cli_options = ("learn_weights",)

    def __init__(
        self,
        probs: Tensor,
        n_categories: Sequence[int] | None = None,
        weights: Tensor | None = None,
        learn_weights: bool = True,
    ) -> None:
        super().__init__()
        if probs.dim() != 3:
            raise MixemError(f"probs must have shape (K, D, C), got {tuple(probs.shape)}")
        _, D, C = probs.shape
        counts = list(n_categories) if n_categories is not None else [C] * D
        if len(counts) != D or not all(1 <= int(c) <= C for c in counts):
            raise MixemError(f"n_categories must be {D} numbers in 1..{C}, got {counts}")
        self.n_categories = [int(c) for c in counts]
        # (D, C) True where category c exists for feature d
        self.valid = torch.arange(C, device=probs.device) < torch.tensor(
            self.n_categories, device=probs.device
        ).reshape(D, 1)
        if bool((probs[:, ~self.valid] != 0).any()):
            raise MixemError("probs must be 0 beyond each feature's number of categories")
        init_weights(self, weights, probs, learn_weights)
        self.probs = PyroParam(  # type: ignore[assignment]
            probs.detach().clone(), constraint=constraints.simplex
        )

    @classmethod
    def from_centres(cls, centres: Tensor, x: Tensor, **options: Any) -> CategoricalMixture:
        """Each component halfway between a one-hot of its centre (K, D) (a data row) and the
        categories' frequencies in ``x`` (N, D); categories per feature from ``x`` (max + 1)
        unless ``n_categories`` is given."""
        validate_codes(x)
        n_categories = options.pop("n_categories", None)
        if n_categories is None:
            n_categories = [int(v) + 1 for v in x.max(0).values]
        C = max(n_categories)
        frequencies = one_hot(x, C).mean(0)  # (D, C)
        probs = 0.5 * (one_hot(centres, C) + frequencies)
        valid = torch.arange(C) < torch.tensor(n_categories).reshape(-1, 1)
        probs = torch.where(valid.to(probs.device), probs, 0.0)
        return cls(probs, n_categories, **options)

    @property
    def n_components(self) -> int:
        return int(self.probs.shape[0])

    def validate_data(self, x: Tensor) -> None:
        """``x`` (N, D) must hold whole numbers with 0 <= x[:, d] < n_categories[d]."""
        validate_codes(x)
        if x.shape[1] != len(self.n_categories):
            raise MixemError(
                f"categorical data has {x.shape[1]} features, the model {len(self.n_categories)}"
            )
        limit = torch.tensor(self.n_categories, dtype=x.dtype, device=x.device)
        reject_rows(
            x >= limit,
            x,
            "categorical",
            "have a category beyond its feature's number of categories",
            f"the model's numbers of categories are {self.n_categories}",
        )

    def forward(self, x: Tensor) -> None:
        """The generative model; ``x`` is (N, D) of category codes."""
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", mixing_prior(self.weights))
            pyro.sample("x", dist.Categorical(probs=self.probs[z]).to_event(1), obs=x)

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """probs = weighted frequencies, floored at PROB_FLOOR and renormalised over the
        feature's categories; an empty component keeps its probs."""
        counts = stats["counts"]
        freq = stats["sum_onehot"] / safe_counts(counts)[:, None, None]
        valid = self.valid.to(freq.device)
        floored = torch.where(valid, freq.clamp_min(PROB_FLOOR), 0.0)
        probs = floored / floored.sum(-1, keepdim=True)
        self.probs = keep_where_empty(probs, self.probs.detach(), counts)
        update_weights(self, counts)


def one_hot(x: Tensor, n_classes: int) -> Tensor:
    """(N, D, n_classes) float one-hot of the codes in ``x`` (N, D), in ``x``'s dtype."""
    return torch.nn.functional.one_hot(x.long(), n_classes).to(x.dtype)


def validate_codes(x: Tensor) -> None:
    """Raise MixemError unless ``x`` (N, D) holds whole numbers >= 0."""
    reject_rows(x < 0, x, "categorical", "have negative codes", "categories are 0, 1, 2, ...")
    reject_rows(
        ~is_whole(x), x, "categorical", "have non-integer codes", "categories are 0, 1, 2, ..."
    )
