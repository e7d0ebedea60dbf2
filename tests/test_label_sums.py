"""The C loops that gather by component: sums by label and candidates' dot products.

``Responsibilities.weighted_sum`` of a Delta q sums each point's values into its component;
for float32 CPU rows that runs in ``inference.native.label_sums``, which must give exactly the
floats of ``index_add_`` (same additions, same order), with or without a reference point. The
truncated search's candidate log-densities (``models.components.gathered_dots``) run in
``inference.native.gathered_dots``: torch's numbers to rounding, each point's independent of
the others.
"""

from __future__ import annotations

import pytest
import torch
from conftest import without_native

from inference import native
from inference.responsibilities import Responsibilities

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler here")


def problem(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(n, d, generator=g) * 100 + 1e4).float()
    return values, torch.randint(k, (n,), generator=g), values[0] + 0.5


@needs_native
@pytest.mark.parametrize(("n", "d", "k"), [(1, 1, 1), (37, 3, 5), (5000, 16, 64), (999, 64, 7)])
def test_label_sums_are_index_add_exactly(n, d, k):
    values, labels, offset = problem(n, d, k, seed=n)
    plain = torch.zeros(k, d).index_add_(0, labels, values)
    assert torch.equal(native.label_sums(values, labels, k), plain)
    shifted = torch.zeros(k, d).index_add_(0, labels, values - offset)
    assert torch.equal(native.label_sums(values, labels, k, offset), shifted)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_sum_with_an_offset_is_the_sum_of_the_differences(dtype):
    values, labels, offset = problem(400, 4, 6, seed=1)
    values, offset = values.to(dtype), offset.to(dtype)
    g = torch.Generator().manual_seed(2)
    weights = torch.softmax(torch.randn(400, 6, generator=g, dtype=dtype), 1)
    top = torch.topk(weights, 2, dim=1)
    for q in (
        Responsibilities.one_hot(labels, dtype),
        Responsibilities(weights, None),
        Responsibilities(top.values / top.values.sum(1, keepdim=True), top.indices),
    ):
        expected = q.weighted_sum(values - offset, 6)
        assert torch.equal(q.weighted_sum(values, 6, offset=offset), expected)
        assert torch.equal(without_native(lambda q=q: q.weighted_sum(values, 6, offset)), expected)


def test_a_label_out_of_range_is_refused_as_index_add_refuses_it():
    values, labels, _ = problem(50, 2, 3, seed=3)
    labels[7] = 3
    with pytest.raises(RuntimeError, match="out of bounds"):
        Responsibilities.one_hot(labels, torch.float32).weighted_sum(values, 3)


def test_per_point_statistics_of_any_shape_are_summed_by_label():
    g = torch.Generator().manual_seed(4)
    outer = torch.randn(30, 2, 2, generator=g)  # x x^T-like statistics, (N, D, D)
    labels = torch.randint(3, (30,), generator=g)
    summed = Responsibilities.one_hot(labels, torch.float32).weighted_sum(outer, 3)
    assert summed.shape == (3, 2, 2)
    assert torch.equal(summed, torch.zeros(3, 2, 2).index_add_(0, labels, outer))


def test_labels_and_offsets_of_any_kind_give_index_add_results():
    values, labels, offset = problem(60, 3, 4, seed=5)
    expected = torch.zeros(4, 3).index_add_(0, labels, values - offset)
    narrow = Responsibilities(torch.ones(60, 1), labels.int()[:, None])  # int32 labels
    assert torch.equal(narrow.weighted_sum(values, 4, offset), expected)
    q = Responsibilities.one_hot(labels, torch.float32)
    scalar = torch.tensor(2.5)  # broadcast to every column
    assert torch.equal(q.weighted_sum(values, 4, scalar), q.weighted_sum(values - scalar, 4))
    wide = q.weighted_sum(values, 4, offset.double())  # float64 offset: float64 sums, as torch
    assert wide.dtype == torch.float64
    assert torch.equal(
        wide, torch.zeros(4, 3).double().index_add_(0, labels, values - offset.double())
    )
    outer = values[:, :, None] * values[:, None, :]  # (N, D, D) with a (D,) offset
    assert torch.equal(q.weighted_sum(outer, 4, offset), q.weighted_sum(outer - offset, 4))


@needs_native
@pytest.mark.parametrize(("m", "n", "f", "k"), [(1, 1, 1, 1), (4, 300, 16, 1024), (3, 77, 13, 9)])
def test_candidate_dot_products_in_c_equal_torch_to_rounding(m, n, f, k):
    from inference.native import gathered_dots as native_dots

    def gathered_dots(table, assignment, stats, bias):
        return native_dots(table, assignment, stats, bias, torch.empty(assignment.shape))

    g = torch.Generator().manual_seed(m + n)
    table, stats = torch.randn(k, f, generator=g), torch.randn(n, f, generator=g)
    bias, assignment = torch.randn(k, generator=g), torch.randint(k, (m, n), generator=g)
    fast = gathered_dots(table, assignment, stats, bias)
    exact = (table.double()[assignment] * stats.double()).sum(-1) + bias.double()[assignment]
    torch.testing.assert_close(fast.double(), exact, rtol=1e-5, atol=1e-5)
    # a point's numbers do not depend on the other points (any chunking, any thread split)
    half = n // 2
    parts = [
        gathered_dots(table, assignment[:, s].contiguous(), stats[s], bias)
        for s in (slice(0, half), slice(half, n))
    ]
    assert torch.equal(torch.cat(parts, 1), fast)
