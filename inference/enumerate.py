"""The E-step's only input: ``log_joint[i, c] = log p(x_i, z_i = c | theta)``, for any mixture.

Computed generically by Pyro: the model is run under ``poutine.enum`` with only the assignment
site ``"z"`` enumerated in parallel, so every log-density in the trace comes out with a leading
enumeration dimension of size K. Summing the log-densities of the sites inside the ``"data"``
plate gives the (K, n) table of a chunk (``inference.site_terms``). Nothing model-specific
appears here.

A trace costs Pyro about 1 ms whatever the chunk's size, so one trace serves every chunk of its
length (see ``_Tables``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import Tensor

from inference.errors import MixemError
from inference.site_terms import (
    ASSIGNMENT_SITE,
    DATA_PLATE,
    OBSERVED_SITE,
    Term,
    plate_terms,
    sum_terms,
)

__all__ = [
    "ASSIGNMENT_SITE",
    "DATA_PLATE",
    "DEFAULT_CHUNK_SIZE",
    "OBSERVED_SITE",
    "enumerate_assignment_only",
    "isolated_params",
    "iter_log_joint",
    "log_joint",
    "trace_enumerated",
]

# rows per chunk: about 1M table entries at K = 64 keep the table in L3 and make the per-chunk
# Python (0.3 ms) small; measured best of 4096-65536 at K = 8 and 64, equal at 256
DEFAULT_CHUNK_SIZE = 16384

Model = Callable[[Tensor], object]


@contextlib.contextmanager
def isolated_params() -> Iterator[None]:
    """Run Pyro code in an empty param store, restoring the caller's store afterwards.

    A PyroModule's parameters are mirrored into Pyro's global param store under their bare
    names ("locs"); two models alive in one process would then silently share them. Each
    inference call gets a fresh scope instead, so the module's own tensors are the truth.
    """
    with pyro.get_param_store().scope():
        yield


def enumerate_assignment_only(site: Any) -> Any:
    """``infer_config`` rule: enumerate ``"z"`` in parallel, leave every other site alone."""
    return {"enumerate": "parallel"} if site["name"] == ASSIGNMENT_SITE else {}


def trace_enumerated(model: Model, x: Tensor) -> Any:
    """One enumerated trace of the model on ``x`` (n, D), its assignment site checked."""
    enumerated = poutine.enum(
        poutine.infer_config(model, enumerate_assignment_only), first_available_dim=-2
    )
    try:
        trace = poutine.trace(enumerated).get_trace(x)
    except NotImplementedError as err:  # Pyro's answer to enumerating a continuous site
        raise MixemError(
            f"site {ASSIGNMENT_SITE!r} was not enumerated: its distribution has no finite "
            f"support to enumerate ({err or 'enumerate_support is not implemented'})"
        ) from err
    if ASSIGNMENT_SITE not in trace.nodes:
        raise MixemError(f"the model has no sample site named {ASSIGNMENT_SITE!r}")
    z: Any = trace.nodes[ASSIGNMENT_SITE]
    if z["infer"].get("_enumerate_dim") != -2 or z["value"].dim() != 2:
        # Pyro samples from the prior (with only a warning) when a site cannot be enumerated;
        # a table built from one sample per point would be silently wrong.
        raise MixemError(
            f"site {ASSIGNMENT_SITE!r} was not enumerated: its distribution must have discrete "
            "support (e.g. Categorical) and it must sit inside pyro.plate('data')"
        )
    values = z["value"].reshape(-1)
    if not torch.equal(values, torch.arange(values.shape[0], device=values.device)):
        raise MixemError(f"site {ASSIGNMENT_SITE!r} must take the values 0..K-1")
    return trace


class _Tables:
    """The tables of one model's chunks, under fixed parameters (one E-step).

    A Pyro trace costs about 1 ms whatever the chunk's size (more than the GEMM of a 16384 x 64
    table), and the sites' distributions depend on the parameters and on the number of rows,
    not on the data: the model is a density of x. So one trace per chunk length serves every
    chunk of that length, the observed value swapped for the chunk's rows; a model whose data
    reach its sites other than as the observed value (a per-point mask, a transformed
    observation) is traced per chunk. The first time a trace serves a second chunk, its table is
    checked against a fresh trace's, once per ``_Tables`` (per E-step): a model that computes
    its distributions from the data is then traced per chunk, as before, when that pair of
    chunks shows it (a sample, not a proof: the rule is part of the model contract).

    Attributes:
        verdict: None until that check is made, then whether the reused table was the fresh
            one (False: every later chunk is traced afresh).
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.kept: dict[int, tuple[list[Term], int, dict[int, Tensor]]] = {}
        self.verdict: bool | None = None

    def __call__(self, chunk: Tensor) -> Tensor:
        """(n, K) table of ``chunk`` (n, D)."""
        kept = self.kept.get(chunk.shape[0])
        if kept is None:
            return self._traced(chunk, keep=True)
        terms, K, fixed = kept
        table = sum_terms(terms, chunk, K, fixed)
        if self.verdict is None:
            fresh = self._traced(chunk, keep=False)
            self.verdict = same = bool(torch.equal(table, fresh))
            if not same:
                self.kept.clear()
                return fresh
        return table

    def _traced(self, chunk: Tensor, keep: bool) -> Tensor:
        trace = trace_enumerated(self.model, chunk)
        K = trace.nodes[ASSIGNMENT_SITE]["value"].numel()
        terms, reusable = plate_terms(trace, chunk)
        if keep and reusable and self.verdict is not False:
            self.kept[chunk.shape[0]] = (terms, K, {})
        return sum_terms(terms, chunk, K)


def iter_log_joint(
    model: Model, x: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, table)`` per chunk of rows: ``table`` is (n, K) for ``x[start:start+n]``.

    Only one chunk's table is alive at a time, so memory is bounded by ``chunk_size`` x K (plus
    whatever the model's own log_prob allocates for a chunk). The model is traced once per
    chunk length where its sites allow (see ``_Tables``).

    Args:
        model: a mixture following the site contract (see ``models``).
        x: (N, D) data.
        chunk_size: rows per chunk.
    """
    if chunk_size < 1:
        raise MixemError(f"chunk_size must be a positive integer, got {chunk_size}")
    with isolated_params(), torch.no_grad():
        tables = _Tables(model)
        for start in range(0, x.shape[0], chunk_size):
            yield start, tables(x[start : start + chunk_size])


def log_joint(model: Model, x: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """The whole (N, K) table ``log p(x_i, z_i = c | theta)``; allocates N x K.

    Args:
        model: a mixture following the site contract.
        x: (N, D) data.
        chunk_size: rows per chunk.
    Returns:
        (N, K) tensor in ``x``'s dtype.
    """
    return torch.cat([table for _, table in iter_log_joint(model, x, chunk_size)])
