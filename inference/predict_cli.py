"""``mixem predict``: label new data with a saved fit, as scikit-learn's ``predict`` would.

The fit in ``--fit DIR`` (``inference.load``) gives the model; its guide (or ``--guide``) gives
the family whose best member one E-step (``inference.em.e_step``) takes at the saved
parameters: labels (delta: the nearest component, categorical: the most probable one),
responsibilities (N, K) (delta: one-hot, categorical: the posterior, tempered: the tempered
posterior, ...) and the per-point log-likelihood log p(x_i | theta); an amortised guide's q is
its saved encoder's output (encoder.pt), one forward pass without training. With ``--out DIR2`` they
are written there as one set (labels.npy, responsibilities.npy, log_likelihood.npy,
predict.json); without it a summary is printed and nothing is written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.cli_types import positive_int
from inference.enumerate import DEFAULT_CHUNK_SIZE
from inference.errors import MixemError


def add_predict_parser(commands: Any) -> None:
    """``mixem predict --fit DIR --data NEW [--out DIR2] [--guide G] [--force]``."""
    parser = commands.add_parser(
        "predict",
        help="label new data with a saved fit (labels, responsibilities, log-likelihoods)",
        description="Load the fit in --fit (the --out of 'mixem fit' or 'select'), take one "
        "E-step of its guide family on --data at the saved parameters; write labels.npy, "
        "responsibilities.npy, log_likelihood.npy and predict.json to --out (without --out: "
        "print a summary, write nothing).",
    )
    parser.add_argument("--fit", required=True, type=Path, metavar="DIR", help="a saved fit")
    parser.add_argument(
        "--data", required=True, help="PATH.npy, PATH.csv or builtin:NAME, with the fit's D"
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR2", help="output directory (default: none)"
    )
    parser.add_argument(
        "--guide",
        default=None,
        help="guide family NAME[:ARG] instead of the fit's (default: the fit's; an anneal "
        "schedule's last family)",
    )
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"rows per E-step chunk; bounds memory (default: {DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument(
        "--lengths",
        default=None,
        metavar="PATH",
        help="an hmm fit's new sequences: their lengths, in the order of the rows of --data "
        "(default: one sequence)",
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")


def family_of(spec: str, k: int, seed: int) -> Any:
    """The family of guide ``spec``; a schedule (``anneal:T0:T1:STEPS``) gives its last one."""
    from inference.guides import parse_anneal, parse_guide

    if spec.strip().startswith("anneal:"):
        schedule = parse_anneal(spec.strip())
        return schedule(schedule.steps + 1)
    return parse_guide(spec, k, seed)


def read_data(spec: str, model: Any, summary: dict[str, Any], what: str, chunk_size: int) -> Any:
    """``spec``'s rows in the fit's dtype, checked as ``fit`` checks them, with the fit's D."""
    from inference.checks import check_support
    from inference.data import load_array, to_tensor
    from inference.validation import check_data

    dtype = summary.get("dtype")
    x = to_tensor(load_array(spec), dtype if dtype in ("float32", "float64") else None)
    check_data(x, 1)
    d = summary.get("d")
    if isinstance(d, int) and x.shape[1] != d:
        raise MixemError(
            f"{spec}: the data has {x.shape[1]} features, the fit in {what} has {d}; pass "
            "data with the fit's columns"
        )
    check_support(model, x, chunk_size)
    return x


def predict(model: Any, family: Any, x: torch.Tensor, chunk_size: int) -> dict[str, Any]:
    """labels (N,) int64, responsibilities (N, K), log_likelihood (N,) and the E-step's ELBO."""
    from inference.em import e_step
    from inference.enumerate import iter_log_joint

    est = e_step(model, family, x, chunk_size)
    k = int(model.n_components)
    per_point = [table.logsumexp(dim=1) for _, table in iter_log_joint(model, x, chunk_size)]
    return {
        "labels": est.labels.cpu().numpy().astype(np.int64),
        "responsibilities": est.q.dense(k).detach().cpu().numpy(),
        "log_likelihood": torch.cat(per_point).detach().cpu().numpy(),
        "elbo": est.elbo,
    }


def _write(out: Path, result: dict[str, Any], info: dict[str, Any]) -> None:
    from inference.outputs import write_json, write_npy

    write_npy(out / "labels.npy", result["labels"])
    write_npy(out / "responsibilities.npy", result["responsibilities"])
    write_npy(out / "log_likelihood.npy", result["log_likelihood"])
    write_json(out / "predict.json", info)


def run_predict(args: argparse.Namespace) -> int:
    """``mixem predict``; returns the exit code (bad input: ``MixemError``, exit 2)."""
    from inference.fit_io import command_line, versions
    from inference.guides.amortised import Amortised, read_encoder
    from inference.load import load_fit
    from inference.outputs import check_out, locked_out, write_set

    started = time.perf_counter()
    what = f"--fit {args.fit}"
    fitted = load_fit(args.fit, what)
    summary, model = fitted.summary, fitted.model
    if summary["model"] == "hmm":  # a chain: the E-step over paths (inference.hmm_cli)
        from inference.hmm_predict import run_hmm_predict

        return run_hmm_predict(args, model, summary)
    if args.lengths is not None:
        raise MixemError("--lengths applies to the fit of an hmm only")
    seed = summary["seed"] if isinstance(summary.get("seed"), int) else 0  # sampled's draws
    guide = args.guide or fitted.guide
    family = family_of(guide, int(model.n_components), seed)
    if isinstance(family, Amortised):  # the fit's trained encoder: one forward pass, no E-step
        family.restore(read_encoder(args.fit, what), what)
    if args.out is not None:
        if Path(args.out).resolve() == Path(args.fit).resolve():
            raise MixemError(f"--out {args.out}: is the fit's own directory; choose another")
        check_out(args.out)
    x = read_data(args.data, model, summary, what, args.chunk_size)
    result = predict(model, family, x, args.chunk_size)
    k = int(model.n_components)
    counts = np.bincount(result["labels"], minlength=k)
    mean_ll = float(result["log_likelihood"].mean())
    info = {
        "fit": str(args.fit),
        "data": args.data,
        "model": summary["model"],
        "guide": getattr(family, "name", guide),
        "k": k,
        "n": int(x.shape[0]),
        "d": int(x.shape[1]),
        "dtype": str(x.dtype).removeprefix("torch."),
        "counts": counts.tolist(),
        "log_likelihood": float(result["log_likelihood"].sum()),
        "mean_log_likelihood": mean_ll,
        "elbo": result["elbo"],
        "seconds": time.perf_counter() - started,
        "versions": versions(),
        "command": command_line(args),
    }
    if args.out is not None:
        with locked_out(args.out):
            write_set(args.out, lambda out: _write(out, result, info))
    shown = f"points per component {counts.tolist()}; " if k <= 20 else ""
    where = f"-> {args.out}" if args.out is not None else "(pass --out DIR to save them)"
    print(
        f"{info['model']} / {info['guide']}: {info['n']} points, {shown}mean log-likelihood "
        f"{mean_ll:.6g} {where}"
    )
    return 0
