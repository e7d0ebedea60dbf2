"""The E-step's only input: ``log_joint[i, c] = log p(x_i, z_i = c | theta)``, for any mixture.

Computed generically by Pyro: the model is run under ``poutine.enum`` with only the assignment
site ``"z"`` enumerated in parallel, so every log-density in the trace comes out with a leading
enumeration dimension of size K. Summing the log-densities of the sites inside the ``"data"``
plate gives the (K, n) table of a chunk. Nothing model-specific appears here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from inference import workspace
from inference.errors import MixemError

ASSIGNMENT_SITE = "z"
OBSERVED_SITE = "x"
DATA_PLATE = "data"
# rows per trace: about 1M table entries at K = 64 amortise Pyro's per-trace cost (~0.5 ms)
# while the table still sits in L3; measured best of 4096-65536 at K = 8 and 64, equal at 256
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


def _chunk_table(model: Model, x: Tensor) -> Tensor:
    """(n, K) table for one chunk ``x`` (n, D) by a single enumerated trace of the model."""
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
    K = values.shape[0]
    if not torch.equal(values, torch.arange(K, device=values.device)):
        raise MixemError(f"site {ASSIGNMENT_SITE!r} must take the values 0..K-1")
    return _sum_site_tables(trace, K, x.shape[0]).T


def _sum_site_tables(trace: Any, K: int, n: int) -> Tensor:
    """(K, n) sum of the log-densities of the sites in the data plate, checked on the way.

    The terms that are already (K, n) (the observation's, usually) are added to the small ones
    (the prior's (K, 1)) in one pass, so a chunk's table costs a single extra read and write
    whatever the model; the result is a new tensor (no site's log_prob is written to) and keeps
    the memory layout of the largest term, so an (n, K) GEMM table comes back contiguous.
    """
    full: list[Tensor] = []
    small: list[Tensor] = []
    for name in trace.stochastic_nodes + trace.observation_nodes:
        site: Any = trace.nodes[name]
        if site_is_subsample(site):
            continue
        if not any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"]):
            raise MixemError(
                f"site {name!r} is outside pyro.plate({DATA_PLATE!r}); a mixture model here "
                "has only per-point sites (put global parameters in PyroParams)"
            )
        if name != ASSIGNMENT_SITE and name in trace.stochastic_nodes:
            raise MixemError(f"latent site {name!r}: only {ASSIGNMENT_SITE!r} may be latent")
        log_prob = _site_log_prob(site)
        # an expanded view (stride 0) is small in memory: it joins the broadcast terms
        is_full = log_prob.shape == (K, n) and 0 not in log_prob.stride()
        (full if is_full else small).append(log_prob if is_full else _compact(log_prob))
    small_sum: Tensor | float = sum(small, 0.0)
    if not full:
        return torch.as_tensor(small_sum).expand(K, n).clone()
    # add in the memory order of the first term: a (K, n) view of an (n, K) table added as
    # (K, n) would walk memory with stride K (measured 20x slower)
    flip = full[0].T.is_contiguous()
    if workspace.is_reused(full[0]):  # a reused buffer nobody else holds: add in place
        table = full[0]
        (table.T if flip else table).add_(_t(small_sum) if flip else small_sum)
        for term in full[1:]:
            table.add_(term)
        return table
    table = (full[0].T + _t(small_sum)).T if flip else full[0] + small_sum
    for term in full[1:]:
        table.add_(term)
    return table


def _site_log_prob(site: Any) -> Tensor:
    """A site's log-density as ``Trace.compute_log_prob`` gives it (scaled and masked), without
    the scalar sum Pyro also takes of each site: that is a pass over the whole table."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, site["scale"], site["mask"])


def _compact(term: Tensor) -> Tensor:
    """``term`` with its broadcast (stride-0) dimensions cut to size 1: a view, for cheap sums."""
    index = tuple(
        slice(0, 1) if stride == 0 and size > 1 else slice(None)
        for size, stride in zip(term.shape, term.stride(), strict=True)
    )
    return term[index]


def _t(value: Tensor | float) -> Tensor | float:
    """Transpose of a 2-D tensor; a 0-D tensor or a float as is."""
    return value.T if isinstance(value, Tensor) and value.dim() == 2 else value


def iter_log_joint(
    model: Model, x: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE, reuse: bool = False
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, table)`` per chunk of rows: ``table`` is (n, K) for ``x[start:start+n]``.

    Only one chunk's table is alive at a time, so memory is bounded by ``chunk_size`` x K (plus
    whatever the model's own log_prob allocates for a chunk).

    Args:
        model: a mixture following the site contract (see ``models``).
        x: (N, D) data.
        chunk_size: rows per enumerated trace.
        reuse: compute every chunk in the same memory (``inference.workspace``): faster, but
            each table is overwritten by the next, so the caller must be done with it (and
            keep no view of it) before asking for the next chunk.
    """
    if chunk_size < 1:
        raise MixemError(f"chunk_size must be a positive integer, got {chunk_size}")
    scope = workspace.reusing() if reuse else contextlib.nullcontext()
    with isolated_params(), torch.no_grad(), scope:
        for start in range(0, x.shape[0], chunk_size):
            workspace.next_chunk()
            yield start, _chunk_table(model, x[start : start + chunk_size])


def log_joint(model: Model, x: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """The whole (N, K) table ``log p(x_i, z_i = c | theta)``; allocates N x K.

    Args:
        model: a mixture following the site contract.
        x: (N, D) data.
        chunk_size: rows per enumerated trace.
    Returns:
        (N, K) tensor in ``x``'s dtype.
    """
    return torch.cat([table for _, table in iter_log_joint(model, x, chunk_size)])
