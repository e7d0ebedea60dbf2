"""inference.kernels: the C pass against the torch reference and a plain full-table computation;
the compiled-library cache's safety checks."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from inference.kernels import build, native_pass, reference, run_codes_pass, run_pass

NATIVE = native_pass.available(torch.float32) and native_pass.available(torch.float64)
needs_c = pytest.mark.skipif(not NATIVE, reason="no C compiler or scipy: the C pass is not built")
MODES = [("hard", 1.0), ("soft", 1.0), ("soft", 0.5)]


def problem(N, F, K, dtype, seed=0, base=True, shift=True):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(K, F, generator=g, dtype=torch.float64) * 2
    t = mu[torch.randint(K, (N,), generator=g)] + torch.randn(
        N, F, generator=g, dtype=torch.float64
    )
    bias = -0.5 * (mu * mu).sum(1) + torch.randn(K, generator=g, dtype=torch.float64)
    h = -0.5 * (t * t).sum(1) if base else None
    s = t.mean(0) if shift else None
    return [None if x is None else x.to(dtype).contiguous() for x in (t, mu, bias, h, s)]


def plain(t, eta, bias, base, shift, mode, temperature):
    """The whole (N, K) table in float64, then each quantity from its definition."""
    t, eta, bias = t.double(), eta.double(), bias.double()
    x = t - (0.0 if shift is None else shift.double())  # the table is of the centred rows
    S = x @ eta.T + bias + (0.0 if base is None else base.double()[:, None])
    labels = S.argmax(1)
    if mode == "hard":
        q = torch.nn.functional.one_hot(labels, eta.shape[0]).double()
        fit, entropy = S.max(1).values, torch.zeros(len(t), dtype=torch.float64)
    else:
        q = torch.softmax(S / temperature, 1)
        fit, entropy = (q * S).sum(1), torch.special.entr(q).sum(1)
    lse = float(torch.logsumexp(S, 1).sum())
    return labels, fit, q.sum(0), q.T @ x, float((fit + entropy).sum()), lse, q


def run(impl, args, mode, temperature, **kw):
    K = args[1].shape[0]
    q = torch.full((args[0].shape[0], K), -1.0, dtype=args[0].dtype) if mode == "soft" else None
    out = impl(*args, mode=mode, temperature=temperature, q_out=q, **kw)
    return out, q


IMPLS = [
    pytest.param(reference.run_pass, id="torch"),
    pytest.param(native_pass.run_pass, id="c", marks=needs_c),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("mode", "temperature"), MODES)
@pytest.mark.parametrize(("N", "F", "K"), [(1000, 5, 7), (1, 1, 1), (300, 1, 3), (257, 3, 1)])
@pytest.mark.parametrize(("with_base", "with_shift"), [(True, True), (False, False), (False, True)])
def test_float64_matches_the_full_table(impl, mode, temperature, N, F, K, with_base, with_shift):
    args = problem(N, F, K, torch.float64, base=with_base, shift=with_shift)
    got, q = run(impl, args, mode, temperature)
    labels, fit, counts, sum_t, elbo, lse, q_true = plain(*args, mode, temperature)
    close = {"rtol": 1e-12, "atol": 1e-12}
    assert torch.equal(got.labels, labels)
    torch.testing.assert_close(got.point_fit, fit, **close)
    torch.testing.assert_close(got.counts, counts, **close)
    torch.testing.assert_close(got.sum_t, sum_t, rtol=1e-12, atol=1e-12 * N)
    assert got.elbo == pytest.approx(elbo, rel=1e-12, abs=1e-12 * N)
    assert got.log_evidence == pytest.approx(lse, rel=1e-12, abs=1e-12 * N)
    assert got.n_changed == N
    if mode == "soft":
        torch.testing.assert_close(q, q_true, rtol=1e-12, atol=1e-15)


@needs_c
@pytest.mark.parametrize(("mode", "temperature"), MODES)
def test_float32_c_matches_the_reference(mode, temperature):
    args = problem(3000, 6, 20, torch.float32)
    (c, qc), (r, qr) = (
        run(impl, args, mode, temperature) for impl in (native_pass.run_pass, reference.run_pass)
    )
    S = args[0].double() @ args[1].double().T + args[2].double() + args[3].double()[:, None]
    top2 = S.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * top2[:, 0].abs().clamp(min=1)
    assert torch.equal(c.labels[clear], r.labels[clear])
    eps = torch.finfo(torch.float32).eps  # one ulp of 1
    scale = S.abs().max(1).values.float()  # the size of a row's entries
    assert ((c.point_fit - r.point_fit).abs() <= 8 * eps * scale).all()
    N = args[0].shape[0]
    magnitude = float(S.abs().sum())
    assert abs(c.elbo - r.elbo) <= 8 * eps * magnitude
    assert abs(c.log_evidence - r.log_evidence) <= 8 * eps * magnitude
    tol = 8 * eps * N  # every term of the sums rounds at a float32 ulp of itself
    torch.testing.assert_close(c.counts, r.counts, rtol=0, atol=tol)
    x_scale = float((args[0] - args[4]).abs().max())
    torch.testing.assert_close(c.sum_t, r.sum_t, rtol=0, atol=tol * x_scale)
    if mode == "soft":
        torch.testing.assert_close(qc, qr, rtol=0, atol=16 * eps)  # entries <= 1; skips < 2e-9


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("mode", "temperature"), MODES)
def test_thread_counts_give_bit_identical_results(dtype, mode, temperature):
    args = problem(20_000, 4, 9, dtype)
    results = [run(native_pass.run_pass, args, mode, temperature, threads=n) for n in (1, 2, 3, 2)]
    (first, q1), rest = results[0], results[1:]
    for other, q in rest:
        for a, b in zip(first, other, strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        if q1 is not None:
            assert torch.equal(q1, q)


@needs_c
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("-DMIXEM_PORTABLE",), id="portable"),
        pytest.param(
            ("-mno-avx512f",),
            id="avx2",
            marks=pytest.mark.skipif("avx2" not in build._cpu_flags(), reason="no AVX2"),
        ),
    ],
)
@pytest.mark.parametrize(("mode", "temperature"), MODES)
def test_the_simd_paths_and_the_plain_loops_agree(monkeypatch, extra, mode, temperature):
    args = problem(3001, 5, 37, torch.float32)
    fast, q_fast = run(native_pass.run_pass, args, mode, temperature)
    library = native_pass._library
    monkeypatch.setattr(native_pass, "_library", lambda suffix: library(suffix, extra))
    plain_c, q_plain = run(native_pass.run_pass, args, mode, temperature)
    S = args[0].double() @ args[1].double().T + args[2].double() + args[3].double()[:, None]
    top2 = S.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * top2[:, 0].abs().clamp(min=1)
    assert torch.equal(fast.labels[clear], plain_c.labels[clear])
    eps = torch.finfo(torch.float32).eps
    magnitude = float(S.abs().sum())
    assert abs(fast.elbo - plain_c.elbo) <= 8 * eps * magnitude
    assert abs(fast.log_evidence - plain_c.log_evidence) <= 8 * eps * magnitude
    torch.testing.assert_close(fast.counts, plain_c.counts, rtol=0, atol=8 * eps * 3001)
    if mode == "soft":
        torch.testing.assert_close(q_fast, q_plain, rtol=0, atol=16 * eps)


@pytest.mark.parametrize("impl", IMPLS)
def test_old_labels_count_the_changes_and_log_evidence_can_be_off(impl):
    args = problem(500, 3, 4, torch.float64)
    first = impl(*args)
    old = first.labels.clone()
    old[:7] = (old[:7] + 1) % 4
    again = impl(*args, old_labels=old, log_evidence=False)
    assert again.n_changed == 7
    assert math.isnan(again.log_evidence)
    assert torch.equal(again.labels, first.labels)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_nan_and_infinite_rows_do_not_fail(impl, dtype, mode):
    t, eta, bias, base, shift = problem(600, 3, 5, dtype)
    t[10, 1] = math.nan
    base[20] = -math.inf
    base[30] = math.inf
    got = impl(t, eta, bias, base, shift, mode=mode)
    assert math.isnan(got.elbo)
    clean = torch.ones(600, dtype=torch.bool)
    clean[[10, 20, 30]] = False
    want = reference.run_pass(t[clean], eta, bias, base[clean], shift, mode=mode)
    assert torch.equal(got.labels[clean], want.labels)
    assert got.labels[20] == 0  # all -inf: the first column, as torch.argmax


def test_dispatch_and_the_switch(monkeypatch):
    args = problem(100, 2, 3, torch.float64)
    expected = reference.run_pass(*args)
    assert torch.equal(run_pass(*args).labels, expected.labels)
    monkeypatch.setenv("MIXEM_NATIVE", "0")
    assert not native_pass.available()
    assert torch.equal(run_pass(*args).labels, expected.labels)
    with pytest.raises(ValueError, match="shape"):
        run_pass(args[0], args[1], args[2][:2])


# --- the codes pass: one-hot statistics from their codes -------------------------------------


def codes_problem(N, D, C, K, dtype, seed=0, base=True):
    """Codes (N, D) int32, log-probabilities (K, D C) (one category never seen: the floor of
    an impossible one), bias, base, and the dense one-hot statistics (N, D C)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, C, (N, D), generator=g, dtype=torch.int32)
    logits = torch.randn(K, D, C, generator=g, dtype=torch.float64) * 2
    eta = torch.log_softmax(logits, -1).reshape(K, D * C)
    eta[0, 0] = torch.finfo(dtype).min / (D * C + 1)
    bias = torch.randn(K, generator=g, dtype=torch.float64)
    h = torch.randn(N, generator=g, dtype=torch.float64) if base else None
    t = torch.nn.functional.one_hot(codes.long(), C).reshape(N, D * C)
    return codes, *[None if x is None else x.to(dtype).contiguous() for x in (eta, bias, h, t)]


CODES_IMPLS = [
    pytest.param(reference.run_codes_pass, reference.run_pass, id="torch"),
    pytest.param(native_pass.run_codes_pass, native_pass.run_pass, id="c", marks=needs_c),
]


def run_codes(impl, codes, eta, bias, h, mode, temperature, **kw):
    q = (
        torch.full((codes.shape[0], eta.shape[0]), -1.0, dtype=eta.dtype)
        if mode == "soft"
        else None
    )
    return impl(codes, eta, bias, h, mode=mode, temperature=temperature, q_out=q, **kw), q


@pytest.mark.parametrize(("codes_impl", "dense_impl"), CODES_IMPLS)
@pytest.mark.parametrize(("mode", "temperature"), MODES)
@pytest.mark.parametrize(("N", "D", "C", "K"), [(5003, 3, 4, 7), (1, 1, 1, 1), (300, 2, 5, 37)])
def test_the_codes_pass_equals_the_dense_pass_of_the_one_hot_float64(
    codes_impl, dense_impl, mode, temperature, N, D, C, K
):
    codes, eta, bias, h, t = codes_problem(N, D, C, K, torch.float64)
    got, q = run_codes(codes_impl, codes, eta, bias, h, mode, temperature)
    labels, fit, counts, sum_t, elbo, lse, q_true = plain(t, eta, bias, h, None, mode, temperature)
    close = {"rtol": 1e-12, "atol": 1e-12}
    assert torch.equal(got.labels, labels)
    torch.testing.assert_close(got.point_fit, fit, **close)
    torch.testing.assert_close(got.counts, counts, rtol=1e-12, atol=1e-12 * N)
    torch.testing.assert_close(got.sum_t, sum_t, rtol=1e-12, atol=1e-12 * N)
    assert got.elbo == pytest.approx(elbo, rel=1e-12, abs=1e-12 * N)
    assert got.log_evidence == pytest.approx(lse, rel=1e-12, abs=1e-12 * N)
    assert got.n_changed == N
    if mode == "soft":
        torch.testing.assert_close(q, q_true, rtol=1e-12, atol=1e-15)
    dense, _ = run(dense_impl, (t, eta, bias, h, None), mode, temperature)
    assert torch.equal(got.labels, dense.labels)


@pytest.mark.parametrize(("codes_impl", "dense_impl"), CODES_IMPLS)
@pytest.mark.parametrize(("mode", "temperature"), MODES)
def test_the_codes_pass_equals_the_dense_pass_of_the_one_hot_float32(
    codes_impl, dense_impl, mode, temperature
):
    N, D, C, K = 3001, 6, 4, 20
    codes, eta, bias, h, t = codes_problem(N, D, C, K, torch.float32)
    got, q = run_codes(codes_impl, codes, eta, bias, h, mode, temperature)
    want, q_want = run(dense_impl, (t, eta, bias, h, None), mode, temperature)
    S = t.double() @ eta.double().T + bias.double() + h.double()[:, None]
    top2 = S.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * top2[:, 0].abs().clamp(min=1)
    assert torch.equal(got.labels[clear], want.labels[clear])
    eps = torch.finfo(torch.float32).eps
    scale = S.abs().max(1).values.float()
    assert ((got.point_fit - want.point_fit).abs() <= 8 * eps * scale).all()
    magnitude = float(S.abs().sum())
    assert abs(got.elbo - want.elbo) <= 8 * eps * magnitude
    assert abs(got.log_evidence - want.log_evidence) <= 8 * eps * magnitude
    tol = 8 * eps * N
    torch.testing.assert_close(got.counts, want.counts, rtol=0, atol=tol)
    torch.testing.assert_close(got.sum_t, want.sum_t, rtol=0, atol=tol)
    if mode == "soft":
        torch.testing.assert_close(q, q_want, rtol=0, atol=16 * eps)


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("mode", "temperature"), MODES)
def test_the_codes_pass_gives_bit_identical_results_for_any_thread_count(dtype, mode, temperature):
    codes, eta, bias, h, _ = codes_problem(40_000, 3, 4, 9, dtype)
    args = (codes, eta, bias, h, mode, temperature)
    results = [run_codes(native_pass.run_codes_pass, *args, threads=n) for n in (1, 2, 3, 2)]
    (first, q1), rest = results[0], results[1:]
    for other, q in rest:
        for a, b in zip(first, other, strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        if q1 is not None:
            assert torch.equal(q1, q)


@needs_c
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("-DMIXEM_PORTABLE",), id="portable"),
        pytest.param(
            ("-mno-avx512f",),
            id="avx2",
            marks=pytest.mark.skipif("avx2" not in build._cpu_flags(), reason="no AVX2"),
        ),
    ],
)
@pytest.mark.parametrize(("mode", "temperature"), MODES)
def test_the_codes_pass_simd_paths_and_plain_loops_agree(monkeypatch, extra, mode, temperature):
    codes, eta, bias, h, _ = codes_problem(3001, 5, 3, 37, torch.float32)
    fast, q_fast = run_codes(native_pass.run_codes_pass, codes, eta, bias, h, mode, temperature)
    library = native_pass._library
    monkeypatch.setattr(native_pass, "_library", lambda suffix: library(suffix, extra))
    slow, q_slow = run_codes(native_pass.run_codes_pass, codes, eta, bias, h, mode, temperature)
    eps = torch.finfo(torch.float32).eps
    assert (fast.labels != slow.labels).float().mean() < 1e-3
    torch.testing.assert_close(fast.sum_t, slow.sum_t, rtol=0, atol=8 * eps * 3001)
    assert fast.elbo == pytest.approx(slow.elbo, rel=1e-5)
    if mode == "soft":
        torch.testing.assert_close(q_fast, q_slow, rtol=0, atol=16 * eps)


@pytest.mark.parametrize(("codes_impl", "dense_impl"), CODES_IMPLS)
def test_the_codes_pass_checks_its_codes_and_counts_changes(codes_impl, dense_impl):
    codes, eta, bias, h, _ = codes_problem(500, 2, 3, 4, torch.float64)
    first = codes_impl(codes, eta, bias, h)
    old = first.labels.clone()
    old[:5] = (old[:5] + 1) % 4
    again = codes_impl(codes, eta, bias, h, old_labels=old, log_evidence=False)
    assert again.n_changed == 5 and math.isnan(again.log_evidence)
    bad = codes.clone()
    bad[7, 1] = 3
    with pytest.raises(ValueError, match=r"0\.\.2"):
        codes_impl(bad, eta, bias, h)
    with pytest.raises(ValueError, match="int32"):
        codes_impl(codes.long(), eta, bias, h)
    with pytest.raises(ValueError, match="per feature"):
        codes_impl(codes, eta[:, :5], bias, h)


def test_the_codes_dispatch_and_the_switch(monkeypatch):
    codes, eta, bias, h, _ = codes_problem(100, 2, 3, 4, torch.float64)
    expected = reference.run_codes_pass(codes, eta, bias, h)
    assert torch.equal(run_codes_pass(codes, eta, bias, h).labels, expected.labels)
    monkeypatch.setenv("MIXEM_NATIVE", "0")
    assert torch.equal(run_codes_pass(codes, eta, bias, h).labels, expected.labels)


# --- the cache of compiled libraries -------------------------------------------------------

SOURCE = "int mixem_probe(void) { return 7; }\n"
needs_cc = pytest.mark.skipif(build.compiler() is None, reason="no C compiler")


def probe(tmp_path: Path) -> Path:
    path = tmp_path / "probe.c"
    path.write_text(SOURCE)
    return path


@needs_cc
def test_the_cache_is_private_and_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIXEM_CACHE_DIR", str(cache))
    path, temporary = build.build(probe(tmp_path), "probe", ["-O1", "-fPIC", "-shared"])
    assert temporary is None and path.parent == cache
    assert cache.stat().st_mode & 0o777 == 0o700
    assert build.build(probe(tmp_path), "probe", ["-O1", "-fPIC", "-shared"])[0] == path
    assert (
        build.load(
            probe(tmp_path), "probe", ["-O1", "-fPIC", "-shared"], ["mixem_probe"]
        ).mixem_probe()
        == 7
    )
    with pytest.raises(OSError, match="lacks"):
        build.load(probe(tmp_path), "probe", ["-O1", "-fPIC", "-shared"], ["missing"])


@needs_cc
@pytest.mark.parametrize("unsafe", ["directory_mode", "library_mode", "owner"])
def test_an_unsafe_cache_is_not_used(tmp_path, monkeypatch, unsafe):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIXEM_CACHE_DIR", str(cache))
    flags = ["-O1", "-fPIC", "-shared"]
    path, _ = build.build(probe(tmp_path), "probe", flags)
    if unsafe == "directory_mode":
        os.chmod(cache, 0o777)
    elif unsafe == "library_mode":
        os.chmod(path, 0o777)
    else:
        uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    other, temporary = build.build(probe(tmp_path), "probe", flags)
    assert temporary is not None and other.parent == temporary and cache not in other.parents
    assert temporary.stat().st_mode & 0o777 == 0o700
    if unsafe != "owner":  # as ourselves: load, and the temporary directory goes away
        lib = build.load(probe(tmp_path), "probe", flags, ["mixem_probe"])
        assert lib.mixem_probe() == 7
    os.chmod(cache, 0o700)
    build.shutil.rmtree(temporary, ignore_errors=True)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_the_output_buffers_are_written_and_returned(impl, mode):
    args = problem(5000, 3, 6, torch.float32)
    want = impl(*args, mode=mode)
    labels, fit = torch.full((5000,), -1, dtype=torch.int64), torch.empty(5000)
    got = impl(*args, mode=mode, labels_out=labels, point_fit_out=fit)
    assert got.labels is labels and got.point_fit is fit
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    with pytest.raises(ValueError, match="labels_out"):
        impl(*args, labels_out=labels[:10])
    with pytest.raises(ValueError, match="point_fit_out"):
        impl(*args, point_fit_out=fit.double())


def test_the_row_reductions_library_uses_the_same_private_cache(tmp_path):
    # inference.native's C loops are built through build.load: a shared, writable cache
    # directory is refused for them as for the pass (a fresh interpreter, a fresh cache path)
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    env = {**os.environ, "MIXEM_CACHE_DIR": str(cache), "MIXEM_NATIVE": "1"}
    code = "from inference import native; print(native.available())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if build.compiler() is None:
        pytest.skip("no C compiler")
    assert out.stdout.strip() == "True"  # built in a private temporary directory instead
    assert list(cache.iterdir()) == []  # nothing written into the shared directory


# --- the squares pass: T = (x - r, (x - r)^2) built per block from x ---------------------------


def squares_problem(N, D, K, dtype, seed=0, shift=True):
    """Data x (N, D) (far from the origin when shifted), natural (K, 2 D) of Normals with
    per-component scales, bias, base, shift (D,) or None, and the materialised T (N, 2 D)."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(K, D, generator=g, dtype=torch.float64) * 3 + (50 if shift else 0)
    scale = torch.rand(K, D, generator=g, dtype=torch.float64) + 0.5
    z = torch.randint(K, (N,), generator=g)
    x = loc[z] + scale[z] * torch.randn(N, D, generator=g, dtype=torch.float64)
    r = loc.mean(0) if shift else torch.zeros(D, dtype=torch.float64)
    precision = scale.pow(-2)
    eta = torch.cat([(loc - r) * precision, -0.5 * precision], 1)
    bias = -(0.5 * (loc - r).square() * precision + scale.log()).sum(1)
    h = torch.full((N,), -0.5 * D * math.log(2 * math.pi), dtype=torch.float64)
    x, eta, bias, h, r = (v.to(dtype).contiguous() for v in (x, eta, bias, h, r))
    y = x - r  # in the data's dtype, as the form's statistic computes it
    t = torch.cat([y, y * y], 1).contiguous()
    return x, eta, bias, h, (r if shift else None), t


SQUARES_IMPLS = [
    pytest.param(reference.run_pass, id="torch"),
    pytest.param(native_pass.run_pass, id="c", marks=needs_c),
]


@pytest.mark.parametrize("impl", SQUARES_IMPLS)
@pytest.mark.parametrize(("mode", "temperature"), MODES)
@pytest.mark.parametrize(("N", "D", "K"), [(5003, 3, 7), (1, 1, 1), (300, 2, 37), (2049, 9, 4)])
@pytest.mark.parametrize("with_shift", [True, False])
def test_the_squares_pass_equals_the_dense_pass_of_t_float64(
    impl, mode, temperature, N, D, K, with_shift
):
    x, eta, bias, h, r, t = squares_problem(N, D, K, torch.float64, shift=with_shift)
    got, q = run(impl, (x, eta, bias, h, r), mode, temperature, squares=True)
    want, q_want = run(impl, (t, eta, bias, h, None), mode, temperature)
    labels, fit, counts, sum_t, elbo, lse, q_true = plain(t, eta, bias, h, None, mode, temperature)
    close = {"rtol": 1e-12, "atol": 1e-12}
    assert torch.equal(got.labels, labels) and torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.point_fit, fit, **close)
    torch.testing.assert_close(got.point_fit, want.point_fit, **close)
    torch.testing.assert_close(got.counts, counts, rtol=1e-12, atol=1e-12 * N)
    scale = float(t.abs().max())
    for other in (sum_t, want.sum_t):
        torch.testing.assert_close(got.sum_t, other, rtol=1e-12, atol=1e-12 * N * scale)
    assert got.elbo == pytest.approx(elbo, rel=1e-12, abs=1e-12 * N)
    assert got.log_evidence == pytest.approx(lse, rel=1e-12, abs=1e-12 * N)
    assert got.elbo == pytest.approx(want.elbo, rel=1e-12, abs=1e-12 * N)
    assert got.n_changed == N
    if mode == "soft":
        torch.testing.assert_close(q, q_true, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(q, q_want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("impl", SQUARES_IMPLS)
@pytest.mark.parametrize(("mode", "temperature"), MODES)
def test_the_squares_pass_equals_the_dense_pass_of_t_float32(impl, mode, temperature):
    N, D, K = 3001, 6, 20
    x, eta, bias, h, r, t = squares_problem(N, D, K, torch.float32)
    got, q = run(impl, (x, eta, bias, h, r), mode, temperature, squares=True)
    want, q_want = run(impl, (t, eta, bias, h, None), mode, temperature)
    S = t.double() @ eta.double().T + bias.double() + h.double()[:, None]
    top2 = S.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * top2[:, 0].abs().clamp(min=1)
    assert torch.equal(got.labels[clear], want.labels[clear])
    eps = torch.finfo(torch.float32).eps
    scale = S.abs().max(1).values.float()
    assert ((got.point_fit - want.point_fit).abs() <= 8 * eps * scale).all()
    magnitude = float(S.abs().sum())
    assert abs(got.elbo - want.elbo) <= 8 * eps * magnitude
    assert abs(got.log_evidence - want.log_evidence) <= 8 * eps * magnitude
    tol = 8 * eps * N
    torch.testing.assert_close(got.counts, want.counts, rtol=0, atol=tol)
    torch.testing.assert_close(got.sum_t, want.sum_t, rtol=0, atol=tol * float(t.abs().max()))
    if mode == "soft":
        torch.testing.assert_close(q, q_want, rtol=0, atol=16 * eps)


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("mode", "temperature"), MODES)
def test_the_squares_pass_gives_bit_identical_results_for_any_thread_count(
    dtype, mode, temperature
):
    x, eta, bias, h, r, _ = squares_problem(40_001, 3, 9, dtype)
    args = (x, eta, bias, h, r)
    results = [
        run(native_pass.run_pass, args, mode, temperature, threads=n, squares=True)
        for n in (1, 2, 3, 2)
    ]
    (first, q1), rest = results[0], results[1:]
    for other, q in rest:
        for a, b in zip(first, other, strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        if q1 is not None:
            assert torch.equal(q1, q)


def test_the_squares_pass_checks_its_shapes_and_dispatches(monkeypatch):
    x, eta, bias, h, r, t = squares_problem(100, 3, 4, torch.float64)
    expected = reference.run_pass(t, eta, bias, h)
    assert torch.equal(run_pass(x, eta, bias, h, r, squares=True).labels, expected.labels)
    with pytest.raises(ValueError, match="2 D"):
        run_pass(x, eta[:, :5], bias, h, r, squares=True)
    with pytest.raises(ValueError, match="shift"):
        run_pass(x, eta, bias, h, torch.cat([r, r]), squares=True)
    with pytest.raises(ValueError, match=r"natural \(K, F\)"):
        run_pass(x, eta, bias, h, r)  # without squares: x is not the (N, 2 D) statistics
    monkeypatch.setenv("MIXEM_NATIVE", "0")
    assert torch.equal(run_pass(x, eta, bias, h, r, squares=True).labels, expected.labels)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("mode", "temperature"), MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_offset_is_added_to_the_point_fits_alone(impl, mode, temperature, dtype):
    # the caller's constant of the table (a prior's mean): each point fit + offset, rounded once
    # in the data's dtype as a later add would, and nothing else changes
    args = problem(700, 3, 6, dtype, seed=4)
    plain_run, _ = run(impl, args, mode, temperature)
    shifted, _ = run(impl, args, mode, temperature, fit_offset=-2.0794415416798357)
    assert torch.equal(
        shifted.point_fit, plain_run.point_fit + torch.tensor(-2.0794415416798357, dtype=dtype)
    )
    assert torch.equal(shifted.labels, plain_run.labels)
    assert torch.equal(shifted.sum_t, plain_run.sum_t)
    assert (shifted.elbo, shifted.log_evidence) == (plain_run.elbo, plain_run.log_evidence)
