"""The GMM's observation distribution: K Gaussians whose enumerated table is one GEMM, exactly.

``MultivariateNormal(locs[z], cov[z])`` under parallel enumeration of ``z`` broadcasts to a
(K, n, D) tensor and solves a triangular system per entry. Here, as in scikit-learn, every
covariance is turned once into its precision Cholesky factor P_c (D, D), upper triangular with
P_c P_c^T = cov_c^-1, so that

    log p(x | c) = sum_d log P_c[d, d] - (D/2) log 2pi - ||(x - mu_c) P_c||^2 / 2.

For all components at once, (x - r) @ [P_1 | ... | P_K] is one (n, D) x (D, K D) GEMM, from
which (mu_c - r) P_c is subtracted (fused into the GEMM as its bias) before squaring and
summing over D. Nothing is expanded: each squared term is an exact whitened difference, so the
table keeps the precision of the direct formula; ``r`` (the mean of the locs) only makes the
GEMM's operands small for data far from the origin. Diagonal and spherical precisions are
diagonal P_c (a broadcast product instead of the GEMM), a tied one is a single P.

The GEMM's output columns are ordered (d, c), not (c, d), so the sum over d adds D contiguous
(rows, K) slices (vectorised along K); summing 16 adjacent floats per entry was 2x slower. Rows
go through in blocks whose (rows, K D) intermediate stays in cache (about 4 MiB).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inference import workspace
from models.components import ExpFamilyComponents

# entries of the per-block (rows, K * D) intermediate: 4 MiB in float32, in L3 with room to spare
_BLOCK_ENTRIES = 1 << 20


def precision_cholesky(covariances: Tensor, covariance_type: str) -> Tensor:
    """The precision Cholesky factors, in the shape of ``covariances``' type.

    Args:
        covariances: full (K, D, D), tied (D, D), diag (K, D) or spherical (K,).
        covariance_type: "full", "tied", "diag" or "spherical".
    Returns:
        full (K, D, D) / tied (D, D): upper-triangular P with P P^T = cov^-1 (scikit-learn's
        ``precisions_cholesky_``); diag (K, D) / spherical (K,): cov^-1/2.
    """
    if covariance_type not in ("full", "tied"):
        return covariances.rsqrt()
    lower = torch.linalg.cholesky(covariances)
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    # L^-1 by a triangular solve (not inv: its rounding is not triangular); P = L^-T
    return torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False).mT


class GaussianComponents(ExpFamilyComponents):
    """x | c ~ Normal(locs[c], covariance[c]), evaluated at the component ``assignment``.

    The exponential-family hooks of the base class (``natural_params`` ...) are not provided:
    they would expand the quadratic form; ``log_prob_table`` and ``log_prob_assigned`` compute
    the whitened differences directly instead. The base class's ``log_prob`` dispatches.

    Args:
        locs: (K, D) means.
        covariances: in the shape of ``covariance_type`` (see ``precision_cholesky``).
        covariance_type: "full", "tied", "diag" or "spherical".
        assignment: int64 indices into ``locs``, any shape broadcastable with the data plate.
    """

    def __init__(
        self,
        locs: Tensor,
        covariances: Tensor,
        covariance_type: str,
        assignment: Tensor,
        validate_args: bool | None = None,
    ) -> None:
        K, D = locs.shape
        self.locs, self.covariances, self.covariance_type = locs, covariances, covariance_type
        self.prec_chol = precision_cholesky(covariances, covariance_type)
        # a constant reference: the density does not depend on it, so no gradient through it
        self.reference = locs.detach().mean(0)
        self._centred_locs = locs - self.reference
        diag = (
            self.prec_chol.diagonal(dim1=-2, dim2=-1)
            if covariance_type in ("full", "tied")
            else self.prec_chol
        )
        half_log_det = diag.log().sum(-1) if covariance_type != "spherical" else D * diag.log()
        # (K,) log of each component's normaliser: sum_d log P_c[d, d] - (D/2) log 2pi
        self.log_norm = half_log_det.expand(K) - 0.5 * D * math.log(2 * math.pi)
        super().__init__(assignment, K, D, validate_args=validate_args)

    def _diag_precision(self) -> Tensor:
        """(K, D) the diagonal P_c of diag and spherical components."""
        K, D = self.locs.shape
        p = self.prec_chol
        return (p[:, None] if self.covariance_type == "spherical" else p).expand(K, D)

    def _operands(self) -> tuple[Tensor, Tensor]:
        """The whitening's right operand and offset, columns in (d, c) order.

        Returns:
            full and tied: weight (D, D K) with weight[e, d K + c] = P_c[e, d] (the GEMM's right
            operand) and offset (D K,) = -(mu_c - r) P_c (its bias); diag and spherical: the
            diagonal precisions (D, K) and offset (D, K), the same quantities without the zeros.
        """
        K, D = self.locs.shape
        if self.covariance_type in ("full", "tied"):
            p = self.prec_chol.expand(K, D, D)
            weight = p.permute(1, 2, 0).reshape(D, D * K)
            shifted = torch.einsum("ke,ked->dk", self._centred_locs, p)  # (mu_c - r) P_c
            return weight, -shifted.reshape(D * K)
        p = self._diag_precision()
        return p.T, -(self._centred_locs * p).T

    def _whitened(self, x: Tensor, operands: tuple[Tensor, Tensor]) -> Tensor:
        """(n, D, K) y[i, d, c] = ((x_i - mu_c) P_c)[d] for ``x`` (n, D), with autograd."""
        K, D = self.locs.shape
        weight, offset = operands
        centred = x - self.reference
        if self.covariance_type in ("full", "tied"):
            return torch.addmm(offset, centred, weight).view(-1, D, K)
        return torch.addcmul(offset, centred[:, :, None], weight)

    def log_prob_table(self, x: Tensor, per_component: Tensor | None = None) -> Tensor:
        """(n, K) log p(x_i | c) (+ ``per_component`` (K,), if given) for every point and
        component; ``x`` is (n, D)."""
        K, D = self.locs.shape
        operands = self._operands()
        constant = self.log_norm if per_component is None else self.log_norm + per_component
        tracked = (self.locs, self.covariances, x)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
            # autograd (the gradient M-step): plain expressions, as out= cannot backpropagate
            return constant - 0.5 * self._whitened(x, operands).square().sum(1)
        n = x.shape[0]
        table = workspace.output("components", (n, K), x)
        rows = max(1, min(n, _BLOCK_ENTRIES // (D * K)))
        matrix = self.covariance_type in ("full", "tied")
        y_block = x.new_empty(rows, D, K)
        # matrix types: [x - r, 1] @ [weight; offset], so the GEMM adds the offset itself (a
        # bias in addmm is one more pass over the block: a copy before the product)
        centred = x.new_ones(rows, D + 1) if matrix else x.new_empty(rows, D)
        right = torch.cat([operands[0], operands[1][None]]) if matrix else operands[0]
        for start in range(0, n, rows):
            m = min(rows, n - start)
            torch.sub(x[start : start + m], self.reference, out=centred[:m, :D])
            y = y_block[:m]
            if matrix:
                torch.mm(centred[:m], right, out=y.view(m, D * K))
            else:
                torch.addcmul(operands[1], centred[:m, :, None], right, out=y)
            torch.sum(y.square_(), 1, out=table[start : start + m])
        # table = log_norm - sum / 2, in place: one pass over (n, K), D times smaller than y
        return table.mul_(-0.5).add_(constant)

    def log_prob_assigned(self, x: Tensor) -> Tensor:
        """log p(x_i | assignment_i) by the direct formula, ``x`` (..., D) broadcast with it."""
        z = self.assignment
        diff = x - self.locs[z]
        if self.covariance_type in ("full", "tied"):
            p = self.prec_chol[z] if self.covariance_type == "full" else self.prec_chol
            y = (diff.unsqueeze(-2) @ p).squeeze(-2)
        else:
            y = diff * self._diag_precision()[z]
        return self.log_norm[z] - 0.5 * y.square().sum(-1)

    def _scale(self) -> Tensor:
        """(K, D, D) lower Cholesky factors of the covariances (for sampling)."""
        K, D = self.locs.shape
        if self.covariance_type in ("full", "tied"):
            return torch.linalg.cholesky(self.covariances).expand(K, D, D)
        return torch.diag_embed(1.0 / self._diag_precision())

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        loc = self.locs[self.assignment].expand(shape)
        noise = torch.randn(shape, dtype=loc.dtype, device=loc.device)
        return loc + (self._scale()[self.assignment] @ noise.unsqueeze(-1)).squeeze(-1)

    @property
    def mean(self) -> Tensor:
        return self.locs[self.assignment].expand(self.batch_shape + self.event_shape)
