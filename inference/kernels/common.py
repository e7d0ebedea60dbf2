"""What both implementations of the pass share: its result, its arguments' checks and the layout
of its rows in blocks and super-blocks."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

MODES = ("hard", "soft")


class PassResult(NamedTuple):
    """One pass over the data, for N rows, K components and F statistics."""

    labels: Tensor  # (N,) int64, first argmax of each row of S
    point_fit: Tensor  # (N,) E_q[S_i] (hard: max_c S_ic), the data's dtype
    counts: Tensor  # (K,) sum_i q_ic, float64
    sum_t: Tensor  # (K, F) sum_i q_ic (T_i - shift), float64
    elbo: float  # sum_i E_q[S_i] + H(q_i)
    log_evidence: float  # sum_i logsumexp_c S_ic (NaN when not asked for)
    n_changed: int  # rows whose label differs from old_labels (N when old_labels is None)


def block_rows(K: int, itemsize: int) -> int:
    """Rows per block: 256 (as scikit-learn's Lloyd loop), more (up to 2048) while a block's
    (rows, K) table stays within 64 KiB (few components: fewer calls per row), fewer when it
    would pass 512 KiB (it should stay in L2); a multiple of 16, at least 16."""
    size = max(1, K * itemsize)
    rows = min(1 << 19, max(256 * size, 1 << 16)) // size
    return max(16, min(2048, rows // 16 * 16))


def super_rows(N: int, F: int, K: int, itemsize: int) -> int:
    """Rows per super-block (each has its own partial sums, reduced in order): a multiple of the
    block, about N / 64 (enough to share among threads) but at least 16384 rows; fewer
    super-blocks when their (K, F) partial sums would pass a quarter of the data's size.
    Depends on the shapes only, never on a thread count, so the sums' rounding does not
    either."""
    block = block_rows(K, itemsize)
    budget = max(N * F * itemsize // 4, 1 << 20)
    count = max(1, min(64, budget // (8 * (K * F + K + 3)), -(-N // max(block, 1 << 14))))
    rows = -(-N // count)
    return max(block, -(-rows // block) * block)


def check(
    t: Tensor,
    natural: Tensor,
    bias: Tensor,
    base: Tensor | None,
    shift: Tensor | None,
    mode: str,
    temperature: float,
    old_labels: Tensor | None,
    q_out: Tensor | None,
) -> None:
    """Raise ValueError unless the arguments fit together (see ``run_pass``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    if t.dim() != 2 or natural.dim() != 2 or natural.shape[1] != t.shape[1]:
        raise ValueError(
            f"t (N, F) and natural (K, F): got {tuple(t.shape)}, {tuple(natural.shape)}"
        )
    N, F = t.shape
    K = natural.shape[0]
    if K < 1:
        raise ValueError("natural needs at least one component")
    expected: dict[str, tuple[Tensor | None, tuple[int, ...]]]
    expected = {"bias": (bias, (K,)), "base": (base, (N,)), "shift": (shift, (F,))}
    expected |= {"old_labels": (old_labels, (N,)), "q_out": (q_out, (N, K))}
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, not {tuple(tensor.shape)}")
    for name, tensor in (("natural", natural), ("bias", bias), ("base", base), ("shift", shift)):
        if tensor is not None and tensor.dtype != t.dtype:
            raise ValueError(f"{name} must have t's dtype {t.dtype}, not {tensor.dtype}")
    if q_out is not None and (q_out.dtype != t.dtype or not q_out.is_contiguous()):
        raise ValueError("q_out must be a contiguous tensor of t's dtype")
    if old_labels is not None and old_labels.dtype != torch.int64:
        raise ValueError("old_labels must be int64")


def check_outputs(t: Tensor, labels_out: Tensor | None, point_fit_out: Tensor | None) -> None:
    """Raise ValueError unless the optional output buffers fit t (N, F): labels_out (N,) int64,
    point_fit_out (N,) of t's dtype, both contiguous on t's device."""
    N = t.shape[0]
    wanted = {"labels_out": (labels_out, torch.int64), "point_fit_out": (point_fit_out, t.dtype)}
    for name, (tensor, dtype) in wanted.items():
        if tensor is None:
            continue
        if tuple(tensor.shape) != (N,) or tensor.dtype != dtype or tensor.device != t.device:
            raise ValueError(f"{name} must be a ({N},) {dtype} tensor on {t.device}")
        if not tensor.is_contiguous() or tensor.requires_grad:
            raise ValueError(f"{name} must be contiguous and not require grad")


def check_codes(
    codes: Tensor,
    natural: Tensor,
    bias: Tensor,
    base: Tensor | None,
    mode: str,
    temperature: float,
    old_labels: Tensor | None,
    q_out: Tensor | None,
) -> Tensor:
    """Raise ValueError unless the codes pass's arguments fit together (see
    ``run_codes_pass``): codes (N, D) int32 in 0..C-1, natural (K, D C). Returns a stand-in
    for the one-hot statistics (N, D C) of natural's dtype (a view of one element, no data)
    for ``check`` and ``check_outputs``."""
    if codes.dim() != 2 or codes.dtype != torch.int32 or natural.dim() != 2:
        raise ValueError(
            f"codes (N, D) int32 and natural (K, D C): got {tuple(codes.shape)} {codes.dtype}, "
            f"{tuple(natural.shape)}"
        )
    (N, D), F = codes.shape, natural.shape[1]
    if D < 1 or F < D or F % D:
        raise ValueError(f"natural's {F} columns are not C >= 1 per feature of codes' {D}")
    if codes.device != natural.device:
        raise ValueError(f"codes on {codes.device}, natural on {natural.device}")
    if codes.numel():
        low, high = torch.aminmax(codes)
        if int(low) < 0 or int(high) >= F // D:
            raise ValueError(f"codes must lie in 0..{F // D - 1}, not {int(low)}..{int(high)}")
    like = natural.new_zeros(()).expand(N, F)
    check(like, natural, bias, base, None, mode, temperature, old_labels, q_out)
    return like


def check_squares(
    x: Tensor,
    natural: Tensor,
    bias: Tensor,
    base: Tensor | None,
    shift: Tensor | None,
    mode: str,
    temperature: float,
    old_labels: Tensor | None,
    q_out: Tensor | None,
) -> Tensor:
    """Raise ValueError unless the squares pass's arguments fit together (see ``run_pass``
    with ``squares``): x (N, D), natural (K, 2 D), shift (D,) or None, one dtype. Returns a
    stand-in for the statistics [x - shift, (x - shift)^2] (N, 2 D) of x's dtype (a view of
    one element, no data) for ``check`` and ``check_outputs``."""
    if x.dim() != 2 or natural.dim() != 2 or natural.shape[1] != 2 * x.shape[1]:
        raise ValueError(
            f"squares: x (N, D) and natural (K, 2 D): got {tuple(x.shape)}, {tuple(natural.shape)}"
        )
    if shift is not None:
        if tuple(shift.shape) != (x.shape[1],):
            raise ValueError(f"shift must have shape {(x.shape[1],)}, not {tuple(shift.shape)}")
        if shift.dtype != x.dtype:
            raise ValueError(f"shift must have t's dtype {x.dtype}, not {shift.dtype}")
    like = x.new_zeros(()).expand(x.shape[0], natural.shape[1])
    check(like, natural, bias, base, None, mode, temperature, old_labels, q_out)
    return like
