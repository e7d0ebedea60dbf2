"""The fused C row reduction (``inference.native``) against torch, and the eager fallback.

The E-step's labels, ELBO and log evidence come from these reductions, so both paths are held
to torch's own ``max``/``logsumexp``/``softmax``: indices exactly (ties to the lowest column),
maxima exactly, logsumexp and weights to float32 rounding.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import without_native

from inference import native, reductions
from inference.em import e_step
from inference.guides import Categorical, Delta, Sampled
from inference.kernels import build
from models import RestrictedGMM

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler here")


def tables() -> list[torch.Tensor]:
    """Float32 tables of many shapes and spreads, with ties, -inf entries and odd widths."""
    g = torch.Generator().manual_seed(0)
    out = []
    for n, K, scale in [(1, 1, 1.0), (7, 3, 1.0), (300, 8, 5.0), (257, 64, 40.0), (33, 257, 300.0)]:
        out.append(torch.randn(n, K, generator=g) * scale)
    tied = torch.randint(0, 3, (500, 16), generator=g).float()  # many exact ties in a row
    tied[:5, 2:] = -math.inf
    out.append(tied)
    return out


def check_summary(table: torch.Tensor, top: torch.Tensor, arg: torch.Tensor, lse: torch.Tensor):
    values, indices = table.max(1)
    assert torch.equal(top, values)
    assert torch.equal(arg, indices)  # torch.max: the first maximum
    torch.testing.assert_close(lse, torch.logsumexp(table, 1), rtol=2e-6, atol=2e-6)


@needs_native
@pytest.mark.parametrize("index", range(6))
def test_native_summary_equals_torch(index):
    table = tables()[index]
    check_summary(table, *native.row_summary(table))
    top, arg, lse, weights, fit, entropy, labels = native.softmax(table)
    check_summary(table, top, arg, lse)
    torch.testing.assert_close(weights, torch.softmax(table, 1), rtol=1e-5, atol=1e-6)
    # the weights' first argmax, ties and NaN rows included, as the separate pass finds it
    assert torch.equal(labels, reductions.argmax_rows(weights)[1])
    # taken while each row was written: the numbers of the separate pass, to the bit
    separate = native.expectation(table, weights)
    assert torch.equal(fit, separate[0]) and torch.equal(entropy, separate[1])


@needs_native
def test_the_softmax_returns_what_it_took_of_its_own_table_and_weights():
    """What the C softmax takes on the way comes back with the weights (nothing is kept for a
    later call): the separate passes' numbers, to the bit; torch's softmax takes none."""
    table = tables()[3]
    weights, facts = reductions.softmax_and_facts(table)
    assert torch.equal(weights, reductions.softmax_rows(table))
    fit, entropy = native.expectation(table, weights)
    assert facts.point_fit is not None and torch.equal(facts.point_fit, fit)
    assert facts.entropy is not None and torch.equal(facts.entropy, entropy)
    assert facts.log_evidence is not None
    assert torch.equal(facts.log_evidence, reductions.row_summary(table).lse)
    assert facts.labels is not None
    assert torch.equal(facts.labels, reductions.argmax_rows(weights)[1])
    q = Categorical().e_step(table)
    assert q.facts is not None and torch.equal(q.facts.entropy, entropy)
    assert q.slice(0, 3).facts is None  # only the family's own q carries them
    assert without_native(lambda: reductions.softmax_and_facts(table))[1] == (None,) * 4


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_summary_equals_torch(index, dtype):
    table = tables()[index].to(dtype)
    top, arg = reductions.eager_max_rows(table)
    check_summary(table, top, arg, reductions.eager_logsumexp_rows(table, top))


@needs_native
def test_native_non_finite_rows_follow_torch():
    table = torch.tensor(
        [[-math.inf, -math.inf], [1.0, math.nan], [math.inf, 2.0], [0.0, 5.0]], dtype=torch.float32
    )
    top, arg, lse = native.row_summary(table)
    assert lse[0] == -math.inf and arg[0] == 0
    assert math.isnan(top[1]) and math.isnan(lse[1])
    assert top[2] == math.inf and lse[2] == math.inf and arg[2] == 0
    assert arg[3] == 1
    torch.testing.assert_close(lse[3], torch.logsumexp(table[3], 0))


@needs_native
def test_far_entries_are_skipped_without_changing_the_sum():
    """Entries more than 18 + log K nats below the maximum are left out of the sum; the result
    still equals float64's logsumexp to float32 rounding."""
    g = torch.Generator().manual_seed(1)
    table = torch.randn(2000, 200, generator=g) * 25.0  # most entries far below their maximum
    lse = native.row_summary(table)[2]
    exact = torch.logsumexp(table.double(), 1)
    torch.testing.assert_close(lse.double(), exact, rtol=1e-6, atol=1e-6)


@needs_native
def test_strided_rows_and_views():
    base = torch.randn(50, 40)
    view = base[:, :30]  # rows contiguous, row stride 40
    check_summary(view, *native.row_summary(view))
    assert not native.handles(base.T)  # columns contiguous: torch's path
    assert not native.handles(base.double())


@pytest.mark.parametrize("family", [Delta(), Categorical()], ids=["delta", "categorical"])
def test_e_step_equal_with_andwithout_native(family):
    """The same float32 E-step through the C loop and through torch: identical labels, the same
    ELBO and log evidence to float32 rounding."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 5, generator=g) * 4.0
    model = RestrictedGMM(x[:12].clone())
    fast = e_step(model, family, x, chunk_size=1000)
    slow = without_native(lambda: e_step(model, family, x, chunk_size=1000))
    assert torch.equal(fast.labels, slow.labels)
    assert fast.elbo == pytest.approx(slow.elbo, rel=1e-5)
    assert fast.log_evidence == pytest.approx(slow.log_evidence, rel=1e-5)
    torch.testing.assert_close(fast.q.weights, slow.q.weights, rtol=1e-4, atol=1e-6)


def test_a_summary_reads_the_table_as_it_is_now():
    table = torch.randn(20, 4)
    first = reductions.row_summary(table)
    table[0, 0] = 100.0  # in place
    again = reductions.row_summary(table)
    assert int(again.arg[0]) == 0 and float(again.top[0]) == 100.0
    assert torch.equal(again.arg[1:], first.arg[1:])


@pytest.mark.skipif(
    build.compiler() is None or os.environ.get("MIXEM_NATIVE") == "0",
    reason="no C compiler here, or the C kernels are switched off",
)
def test_the_c_kernels_build_wherever_there_is_a_compiler():
    # a source that fails to compile would otherwise only skip the tests marked needs_native
    assert native.available()


def test_native_off_by_environment(tmp_path):
    """MIXEM_NATIVE=0 turns the C loop off; a fresh interpreter reports it unavailable."""
    env = {**os.environ, "MIXEM_NATIVE": "0", "MIXEM_CACHE_DIR": str(tmp_path)}
    code = "from inference import native; print(native.available())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
    assert not any(tmp_path.iterdir())  # nothing was compiled


@needs_native
def test_native_expectation_and_entropy_equal_torch():
    """E_q[table] and H(q) per row in one pass, against the torch formulas; zero weights count
    as nothing, also against -inf entries."""
    from inference.elbo import entropy_per_point, expected_log_joint_per_point
    from inference.responsibilities import Responsibilities

    g = torch.Generator().manual_seed(3)
    table = torch.randn(400, 37, generator=g) * 10.0
    weights = torch.softmax(table, 1)
    weights[:50, 5] = 0.0  # exact zeros ...
    table[:50, 5] = -math.inf  # ... where the table is -inf
    weights[50:60] = torch.nn.functional.one_hot(torch.arange(10) % 37, 37).float()
    q = Responsibilities(weights, None)
    fit, entropy = native.expectation(table, weights)
    torch.testing.assert_close(fit, expected_log_joint_per_point(table, q), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(entropy, entropy_per_point(q), rtol=1e-5, atol=1e-6)
    assert torch.all(entropy[50:60] == 0)


def test_assembler_refuses_chunks_of_different_widths():
    from inference.errors import MixemError
    from inference.responsibilities import Assembler, Responsibilities

    assembled = Assembler(4)
    assembled.put(0, Responsibilities(torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.long)))
    with pytest.raises(MixemError, match="same states per point"):
        assembled.put(2, Responsibilities(torch.full((2, 2), 0.5), torch.zeros(2, 2).long()))


def test_e_step_recycles_a_dead_q_only_when_it_fits():
    """The EM loop hands the previous q's memory to the next E-step: same values as a fresh
    E-step; a q of another shape is not used."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(500, 3, generator=g)
    model = RestrictedGMM(x[:6].clone())
    fresh = e_step(model, Categorical(), x, chunk_size=128)
    old = e_step(model, Categorical(), x, chunk_size=128)
    again = e_step(model, Categorical(), x, chunk_size=128, recycle=old.q)
    assert again.q.weights.data_ptr() == old.q.weights.data_ptr()
    assert torch.equal(again.q.weights, fresh.q.weights)
    assert (again.elbo, again.log_evidence) == (fresh.elbo, fresh.log_evidence)
    hard = e_step(model, Delta(), x, chunk_size=128, recycle=fresh.q)  # (N, 1): no fit
    assert hard.q.weights.data_ptr() != fresh.q.weights.data_ptr()
    assert torch.equal(fresh.q.weights, again.q.weights)  # left alone
    sampled = e_step(model, Sampled(seed=3), x, chunk_size=128)
    # its own q is (N, 1): the dead dense q is not used
    over_old = e_step(model, Sampled(seed=3), x, chunk_size=128, recycle=again.q)
    assert torch.equal(sampled.q.indices, over_old.q.indices)


@needs_native
def test_native_rows_split_across_threads_give_the_same_answer():
    """With torch's thread count above 1 the rows go to several threads: bit-identical to one."""
    g = torch.Generator().manual_seed(5)
    table = torch.randn(10000, 33, generator=g) * 8.0
    weights = torch.softmax(table, 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (
            *native.row_summary(table),
            *native.softmax(table),
            *native.expectation(table, weights),
        )
        torch.set_num_threads(3)
        many = (
            *native.row_summary(table),
            *native.softmax(table),
            *native.expectation(table, weights),
        )
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))


@needs_native
def test_native_empty_and_single_column_tables():
    empty = torch.empty(0, 5)
    top, arg, lse = native.row_summary(empty)
    assert top.shape == arg.shape == lse.shape == (0,)
    column = torch.randn(7, 1)
    check_summary(column, *native.row_summary(column))
    assert torch.equal(native.softmax(column)[3], torch.ones(7, 1))


@needs_native
def test_native_softmax_stays_normalised_far_from_zero():
    """Weights are exp(row - max) / sum, as torch's: the rounding of a logsumexp of 1e6 never
    enters them, so rows sum to 1 to float32 rounding wherever the table sits."""
    g = torch.Generator().manual_seed(6)
    for offset in (1e2, 1e4, 1e6):
        table = torch.randn(2000, 8, generator=g) - offset
        weights = native.softmax(table)[3]
        torch.testing.assert_close(weights.sum(1), torch.ones(2000), rtol=0, atol=5e-7)
        torch.testing.assert_close(weights, torch.softmax(table, 1), rtol=1e-5, atol=5e-7)
    tied = torch.full((2, 2), 1e30)
    assert torch.equal(native.softmax(tied)[3], torch.full((2, 2), 0.5))
    assert torch.equal(native.softmax(tied)[6], torch.zeros(2, dtype=torch.int64))  # the first


@needs_native
def test_layouts_the_c_loops_cannot_read_go_to_torch():
    assert not native.handles(torch.randn(1, 10)[:, ::2])  # one row, strided columns
    assert not native.handles(torch.randn(1, 5).expand(4, 5))  # rows overlapping (stride 0)
    assert native.handles(torch.randn(3, 1)[:, :1]) and native.handles(torch.randn(1, 5))
    strided = torch.randn(1, 10)[:, ::2]
    torch.testing.assert_close(reductions.softmax_rows(strided), torch.softmax(strided, 1))


def test_e_step_under_inference_mode():
    """Inference-mode tensors (no version counter, not writable outside): the same E-step."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(400, 2, generator=g)
    model = RestrictedGMM(x[:3].clone())
    plain = e_step(model, Delta(), x)
    with torch.inference_mode():
        inside = e_step(model, Delta(), x)
    assert torch.equal(plain.labels, inside.labels) and plain.elbo == inside.elbo


def test_eager_argmax_of_a_nan_row_is_its_first_nan():
    table = torch.tensor(
        [[1.0, math.nan, 3.0, math.nan], [0.0, 2.0, 2.0, 1.0]], dtype=torch.float64
    )
    assert reductions.eager_max_rows(table)[1].tolist() == [1, 1]


@needs_native
def test_native_softmax_gives_no_weight_to_what_the_sum_left_out():
    K = 64
    table = torch.full((3, K), -(18 + math.log(K)) - 0.5)  # each under exp(-18) / K
    table[:, 0], table[:, 5] = 0.0, -1.0
    weights = native.softmax(table)[3]
    assert int((weights > 0).sum()) == 6 and bool((weights[:, [0, 5]] > 0).all())
    torch.testing.assert_close(weights, torch.softmax(table, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(1), torch.ones(3), rtol=0, atol=1e-6)


def test_softmax_and_recycled_q_work_with_inference_mode_tensors():
    g = torch.Generator().manual_seed(6)
    table = torch.randn(50, 4, generator=g)
    with torch.inference_mode():
        weights = reductions.softmax_rows(table)  # a normal table, inference-mode weights
    torch.testing.assert_close(weights, torch.softmax(table, 1), rtol=1e-5, atol=1e-6)
    x = torch.randn(300, 2, generator=g)
    model = RestrictedGMM(x[:4].clone())
    with torch.inference_mode():
        made_inside = e_step(model, Categorical(), x, chunk_size=64)
    outside = e_step(model, Categorical(), x, chunk_size=64, recycle=made_inside.q)
    assert torch.equal(outside.q.weights, made_inside.q.weights)
