"""Component distributions of a mixture, indexed by the assignment, whose enumeration is a GEMM.

In a mixture the observation site reads ``pyro.sample("x", components(z), obs=x)``. When Pyro
enumerates ``z`` in parallel, ``z`` is ``arange(K)`` of shape (K, 1), constant along the data
plate, and the site's log-density is the whole (K, n) table. Written as ``Normal(locs[z], 1)``
that table goes through a (K, n, D) tensor. Written in exponential-family form

    log p(x | c) = eta_c . T(x) - A(eta_c) + log h(x)

it is one matrix product ``T(x) @ eta.T`` (n, F) x (F, K) plus a row and a column: this module's
base class does exactly that whenever the assignment is constant along the data plate, and
evaluates only the assigned component otherwise (a Delta guide's replay, sampling; a truncated
E-step's (m, n) candidates by one gather and product, ``log_prob_candidates``). A family
is a subclass giving its natural parameters, log-normaliser, statistic and base measure.

Float precision: the expanded form cancels large terms when the data sit far from the origin
(||x||^2 and 2 x.mu nearly equal), so families of location type shift data and parameters by a
``reference`` point (the mean of their locations) before the product; the density is unchanged
exactly, the rounding is that of data centred as scikit-learn centres them.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from inference import native, workspace


def is_constant_along_plate(assignment: Tensor) -> bool:
    """True when the assignment has a trailing singleton data-plate dimension, (..., m, 1).

    That is what parallel enumeration gives (K, 1); a per-point assignment (n,) is not.
    """
    return assignment.dim() >= 2 and assignment.shape[-1] == 1


class ExpFamilyComponents(TorchDistribution):
    """K exponential-family densities over R^D, evaluated at the component ``assignment``.

    batch_shape is ``assignment.shape``; event_shape is (D,). Subclasses implement
    ``natural_params`` (K, F), ``log_normaliser`` (K,), ``statistic`` (n, D) -> (n, F),
    ``base_log_measure`` (n, D) -> (n,) and ``sample``; they may override ``log_prob_assigned``
    with a more accurate per-point formula.

    Args:
        assignment: int64 component indices in 0..K-1, any shape broadcastable with the plate.
        n_components: K.
        dim: D.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012 - torch's contract
    support = constraints.real_vector

    def __init__(
        self,
        assignment: Tensor,
        n_components: int,
        dim: int,
        validate_args: bool | None = None,
    ) -> None:
        self.assignment = assignment
        self.n_components = n_components
        super().__init__(assignment.shape, torch.Size([dim]), validate_args=validate_args)

    # --- the family ---------------------------------------------------------------------------
    def natural_params(self) -> Tensor:
        """(K, F) eta_c."""
        raise NotImplementedError

    def log_normaliser(self) -> Tensor:
        """(K,) A(eta_c)."""
        raise NotImplementedError

    def statistic(self, x: Tensor) -> Tensor:
        """(n, F) T(x) for ``x`` (n, D)."""
        raise NotImplementedError

    def base_log_measure(self, x: Tensor) -> Tensor:
        """(n,) log h(x) for ``x`` (n, D)."""
        raise NotImplementedError

    # --- evaluation ---------------------------------------------------------------------------
    def log_prob_table(self, x: Tensor, per_component: Tensor | None = None) -> Tensor:
        """(n, K) log p(x_i | c) (+ ``per_component`` (K,), if given) for every point and
        component, by one GEMM; ``x`` is (n, D)."""
        stats = self.statistic(x)
        bias = -self.log_normaliser()
        if per_component is not None:
            bias = bias + per_component
        # addmm fuses the bias into the product: one pass over the (n, K) output, one for h(x)
        table = torch.addmm(bias, stats, self.natural_params().T)
        return table.add_(self.base_log_measure(x)[:, None])

    def log_prob_plus(self, value: Tensor, per_component: Tensor) -> Tensor | None:
        """``log_prob(value) + per_component[:, None]`` when the assignment is enumerated
        (``arange(K)`` of shape (K, 1), ``value`` (n, D)), else None.

        The enumeration's offer (``inference.enumerate``): the other sites' terms that are
        constant along the points (the prior's log-weights, (K,)) go into the GEMM's bias, where
        they cost nothing, instead of a pass over the (K, n) table.
        """
        z = self.assignment
        K = self.n_components
        if not (z.shape == (K, 1) and value.dim() == 2 and _is_arange(z.reshape(-1), K)):
            return None
        if not _folds(type(self)):  # a subclass with its own log_prob, or an older table
            return None
        if self._validate_args:
            self._validate_sample(value)
        return self.log_prob_table(value, per_component).T

    def log_prob_assigned(self, x: Tensor) -> Tensor:
        """log p(x_i | assignment_i), broadcasting ``x`` (..., D) with the assignment."""
        z = self.assignment
        eta, A = self.natural_params()[z], self.log_normaliser()[z]
        return (self.statistic_nd(x) * eta).sum(-1) - A + self.base_log_measure_nd(x)

    def log_prob_candidates(self, x: Tensor) -> Tensor:
        """(m, n) log p(x_i | assignment[j, i]): m candidate components per point.

        A truncated E-step asks for a few components per point, not all K: ``gathered_dots``
        takes eta_c . T(x_i) for the (m, n) pairs in O(m n F), never forming the (m, n, D)
        differences of ``log_prob_assigned``. The (m, n) result is contiguous, so reductions
        over the candidates run along its leading dimension (vectorised over n).

        Args:
            x: (n, D) points; the assignment is (m, n) int64.
        """
        z = self.assignment
        inner = gathered_dots(self.natural_params(), z, self.statistic(x))
        inner -= self.log_normaliser()[z]
        return inner.add_(self.base_log_measure(x))

    def statistic_nd(self, x: Tensor) -> Tensor:
        """``statistic`` for ``x`` of any leading shape (..., D) -> (..., F)."""
        return self.statistic(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    def base_log_measure_nd(self, x: Tensor) -> Tensor:
        """``base_log_measure`` for ``x`` of any leading shape (..., D) -> (...)."""
        return self.base_log_measure(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1])

    def log_prob(self, value: Tensor) -> Tensor:
        """Shape: broadcast of ``batch_shape`` with ``value.shape[:-1]``.

        Enumerated (assignment (..., m, 1), ``value`` (n, D)): the (n, K) table by one GEMM,
        returned as a (..., m, n) view, columns picked by the assignment's values. Candidates
        (assignment (m, n), ``value`` (n, D)): ``log_prob_candidates``. Otherwise the assigned
        component of each point only.
        """
        if self._validate_args:
            self._validate_sample(value)
        z = self.assignment
        if is_candidate_table(z, value):
            return self.log_prob_candidates(value)
        if not (is_constant_along_plate(z) and value.dim() == 2):
            return self.log_prob_assigned(value)
        table = self.log_prob_table(value)  # (n, K)
        flat = z.reshape(-1)
        if not _is_arange(flat, self.n_components):
            table = table[:, flat]
        return table.T.reshape(*z.shape[:-1], value.shape[0])


@functools.cache
def _folds(cls: type[ExpFamilyComponents]) -> bool:
    """True when ``cls`` computes its enumerated log-density as this module's ``log_prob`` does
    (it does not override it) and its ``log_prob_table`` takes the ``per_component`` terms."""
    if cls.log_prob is not ExpFamilyComponents.log_prob:
        return False
    return "per_component" in inspect.signature(cls.log_prob_table).parameters


def gathered_dots(
    table: Tensor, assignment: Tensor, stats: Tensor, bias: Tensor | None = None
) -> Tensor:
    """(m, n) table[assignment[j, i]] . stats[i] (+ bias[assignment[j, i]]); ``table`` (K, F),
    ``stats`` (n, F), ``bias`` (K,).

    One candidate row at a time, through one (n, F) buffer: a gather, a product and a
    matrix-vector sum. Gathering all (m, n, F) at once was 2x slower at m = 4, n = 65536 (a
    fresh 16 MiB temporary, paged in on every call); inside ``workspace.reusing()`` the buffer
    and the result are also kept across chunks.
    """
    ones = torch.ones(stats.shape[-1], dtype=stats.dtype, device=stats.device)
    if torch.is_grad_enabled() and (table.requires_grad or stats.requires_grad):
        rows = torch.stack([(table[row] * stats) @ ones for row in assignment])
        return rows if bias is None else rows + bias[assignment]
    out = workspace.output("candidates", tuple(assignment.shape), stats)
    if _native_dots(table, assignment, stats, bias):  # one pass in C, no gathered copies
        return native.gathered_dots(table, assignment, stats, bias, out)
    buffer = workspace.temporary("gathered", stats)
    for j, row in enumerate(assignment):
        torch.index_select(table, 0, row, out=buffer)
        torch.mv(buffer.mul_(stats), ones, out=out[j])
        if bias is not None:
            out[j] += bias[row]
    return out


def _native_dots(table: Tensor, assignment: Tensor, stats: Tensor, bias: Tensor | None) -> bool:
    """True when ``native.gathered_dots`` takes these: float32 CPU, contiguous, an int64
    assignment within the table's rows."""
    operands = (table, stats) if bias is None else (table, stats, bias)
    if not native.available() or assignment.numel() == 0 or assignment.dtype != torch.int64:
        return False
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in operands):
        return False
    if not (assignment.device.type == "cpu" and assignment.is_contiguous()):
        return False
    if not all(t.is_contiguous() for t in operands):
        return False
    low, high = torch.aminmax(assignment)
    return int(low) >= 0 and int(high) < table.shape[0]


def is_candidate_table(assignment: Tensor, value: Tensor) -> bool:
    """True for an assignment (m, n) of m components per point of ``value`` (n, D), n > 1
    (n = 1 reads as enumeration, whose table path gives the same numbers)."""
    return (
        assignment.dim() == 2
        and value.dim() == 2
        and assignment.shape[-1] == value.shape[0]
        and value.shape[0] > 1
    )


def _is_arange(values: Tensor, n: int) -> bool:
    """True when ``values`` (m,) is exactly 0, 1, ..., n-1 (the enumerated support)."""
    if values.shape[0] != n:
        return False
    return bool(torch.equal(values, torch.arange(n, device=values.device)))


class IsotropicNormalComponents(ExpFamilyComponents):
    """x | c ~ Normal(locs[c], I_D): eta_c = mu_c, T(x) = x, A = ||mu_c||^2 / 2,
    log h(x) = -||x||^2 / 2 - (D/2) log 2pi; all taken relative to ``reference`` (the mean of
    ``locs``), which changes no density but keeps the GEMM's terms small.

    Args:
        locs: (K, D) component means.
        assignment: int64 indices into ``locs``.
    """

    arg_constraints = {"locs": constraints.real}  # noqa: RUF012 - torch's contract

    def __init__(self, locs: Tensor, assignment: Tensor, validate_args: bool | None = None) -> None:
        self.locs = locs
        self.reference = locs.mean(0)
        self._centred_locs = locs - self.reference
        K, D = locs.shape
        # each component's constant: once per trace, which may serve many chunks
        self._component_terms = -0.5 * self._centred_locs.square().sum(-1) - 0.5 * D * math.log(
            2 * math.pi
        )
        super().__init__(assignment, K, D, validate_args=validate_args)

    def natural_params(self) -> Tensor:
        return self._centred_locs

    def log_normaliser(self) -> Tensor:
        return 0.5 * self._centred_locs.square().sum(-1)

    def statistic(self, x: Tensor) -> Tensor:
        return x - self.reference

    def base_log_measure(self, x: Tensor) -> Tensor:
        D = x.shape[-1]
        return -0.5 * (x - self.reference).square().sum(-1) - 0.5 * D * math.log(2 * math.pi)

    def log_prob_table(self, x: Tensor, per_component: Tensor | None = None) -> Tensor:
        """(n, K) as the base class, with the centring done once for ``x`` (n, D).

        -||x - mu||^2 / 2 = x.mu - ||mu||^2 / 2 - ||x||^2 / 2 (all centred): one GEMM with the
        components' terms as its bias, then the points' column. (Folding that column into the
        product as an extra feature saves a pass but made the rounding depend on the number of
        rows, i.e. on the chunk size; this form gives bit-identical tables for any chunking.)
        """
        bias = self._component_terms
        if per_component is not None:
            bias = bias + per_component
        if torch.is_grad_enabled() and self._centred_locs.requires_grad:  # out= can't backprop
            centred = x - self.reference
            table = torch.addmm(bias, centred, self._centred_locs.T)
            return table.sub_(0.5 * centred.square().sum(-1, keepdim=True))
        # the (n, D) temporaries in reused memory: fresh ones cost as much as the arithmetic
        centred = torch.sub(x, self.reference, out=workspace.temporary("centred", x))
        squares = torch.square(centred, out=workspace.temporary("squares", x))
        out = workspace.output("components", (x.shape[0], self.n_components), x)
        table = torch.addmm(bias, centred, self._centred_locs.T, out=out)
        return table.sub_(squares.sum(-1, keepdim=True).mul_(0.5))

    def log_prob_candidates(self, x: Tensor) -> Tensor:
        """(m, n) as the base class for ``x`` (n, D) and an (m, n) assignment, with ``x``
        centred once and each component's constant terms gathered as one bias."""
        if torch.is_grad_enabled() and self.locs.requires_grad:  # out= cannot backpropagate
            centred, squares = x - self.reference, (x - self.reference).square()
        else:
            centred = torch.sub(x, self.reference, out=workspace.temporary("centred", x))
            squares = torch.square(centred, out=workspace.temporary("squares", x))
        inner = gathered_dots(self._centred_locs, self.assignment, centred, self._component_terms)
        return inner.sub_(0.5 * squares.sum(-1))

    def log_prob_assigned(self, x: Tensor) -> Tensor:
        # the direct form is exact to rounding wherever x sits: no expansion needed per point
        diff = x - self.locs[self.assignment]
        D = x.shape[-1]
        return -0.5 * diff.square().sum(-1) - 0.5 * D * math.log(2 * math.pi)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        loc = self.locs[self.assignment].expand(self.batch_shape + self.event_shape)
        shape = torch.Size(sample_shape) + loc.shape
        return loc + torch.randn(shape, dtype=loc.dtype, device=loc.device)

    @property
    def mean(self) -> Tensor:
        return self.locs[self.assignment].expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        return torch.ones_like(self.mean)
