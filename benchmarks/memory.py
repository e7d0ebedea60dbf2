"""Peak resident memory of one fit, measured in a fresh interpreter.

    python benchmarks/memory.py METHOD N D K CHUNK ITERS   (METHOD: mixem | sklearn)

prints one JSON line: the interpreter's baseline, the data's size, and the peak above the
baseline (the data included). The baseline is taken after imports and a warm-up fit of 1000
rows (so the libraries a fit loads, e.g. the compiled pass and scipy's BLAS, are not counted as
memory the data need); the data are generated next, and the kernel's peak counter is reset
(``/proc/self/clear_refs``) so the generator's temporaries do not count. ``extra_mib`` is the
peak above the resident set just before the fit (the data resident): what the fit itself adds.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _child(method: str, n: int, d: int, k: int, chunk: int, iters: int) -> dict[str, float]:
    from cases import blobs, initial_centres, pyro_quiet

    from inference.em import fit
    from inference.guides import Delta
    from models import RestrictedGMM

    pyro_quiet()
    small = blobs(1000, d, min(k, 10), seed=1)
    if method == "sklearn":
        from sklearn.cluster import KMeans

        KMeans(min(k, 10), n_init=1, max_iter=2).fit(small.numpy())
    else:
        fit(RestrictedGMM(small[: min(k, 10)].clone()), small, Delta(), max_iter=2)
    gc.collect()
    baseline = _status_kib("VmRSS")
    x = blobs(n, d, k, seed=0)
    init = initial_centres(x, k, seed=1)
    gc.collect()
    before = _status_kib("VmRSS")
    _reset_peak()
    if method == "mixem":
        fit(RestrictedGMM(init), x, Delta(), max_iter=iters, tol=0.0, chunk_size=chunk)
    else:
        from sklearn.cluster import KMeans

        KMeans(k, init=init.numpy(), n_init=1, max_iter=iters, tol=0.0).fit(x.numpy())
    peak = _status_kib("VmHWM")
    mib = 1024.0
    return {
        "baseline_mib": baseline / mib,
        "data_mib": x.numel() * x.element_size() / 2**20,
        "peak_above_baseline_mib": (peak - baseline) / mib,
        "extra_mib": (peak - before) / mib,
    }


def measure(method: str, n: int, d: int, k: int, chunk: int, iters: int) -> dict[str, Any]:
    """Run the child in a fresh interpreter and return its JSON line as a dict."""
    args = [method, n, d, k, chunk, iters]
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    method, *sizes = sys.argv[1:]
    torch.set_num_threads(torch.get_num_threads())
    print(json.dumps(_child(method, *map(int, sizes))))
