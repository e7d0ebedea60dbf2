"""``mixem predict`` of an HMM fit: one E-step of its guide family on new sequences.

``inference.predict_cli`` hands an ``hmm`` fit here: labels.npy (the path for delta and
sampled, each step's most probable state otherwise), responsibilities.npy (N, K) (q's
marginals, or the path one-hot) and predict.json (the ELBO and log p(x) summed over the
sequences), written as one set; without ``--out`` a summary is printed and nothing written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.errors import MixemError
from inference.hmm import fit_hmm, parse_guide
from inference.hmm_cli import load_sequences
from inference.outputs import check_out, locked_out, write_json, write_npy, write_set


def predict_hmm(
    model: Any, guide: str, x: torch.Tensor, lengths: torch.Tensor | None, seed: int
) -> dict[str, Any]:
    """One E-step of the HMM family ``guide`` on ``x`` (N, D) at ``model``'s parameters: labels
    (N,), responsibilities (N, K) (q's marginals; one-hot of the path for delta and sampled),
    the ELBO and log p(x) summed over the sequences ``lengths`` (S,) (None: one)."""
    est = fit_hmm(model, x, lengths, guide, max_iter=0, seed=seed)
    q = est.q.marginals
    if q is None:
        q = torch.nn.functional.one_hot(est.labels, int(model.n_components)).to(x.dtype)
    last = est.trace[-1]
    return {
        "labels": est.labels.cpu().numpy().astype(np.int64),
        "responsibilities": q.detach().cpu().numpy(),
        "elbo": last.elbo,
        "log_evidence": last.log_evidence,
    }


def run_hmm_predict(args: argparse.Namespace, model: Any, summary: dict[str, Any]) -> int:
    """``mixem predict`` of an HMM fit: labels.npy, responsibilities.npy, predict.json."""
    started = time.perf_counter()
    seed = summary["seed"] if isinstance(summary.get("seed"), int) else 0
    guide = args.guide or str(summary.get("guide") or "delta")
    parse_guide(guide, seed)
    if args.out is not None:
        if Path(args.out).resolve() == Path(args.fit).resolve():
            raise MixemError(f"--out {args.out}: is the fit's own directory; choose another")
        check_out(args.out)
    dtype = summary.get("dtype")
    args.dtype = dtype if dtype in ("float32", "float64") else None
    x, lengths = load_sequences(args)
    if x.dim() == 2 and isinstance(summary.get("d"), int) and x.shape[1] != summary["d"]:
        raise MixemError(
            f"{args.data}: the data has {x.shape[1]} features, the fit in --fit {args.fit} has "
            f"{summary['d']}; pass data with the fit's columns"
        )
    result = predict_hmm(model, guide, x, lengths, seed)
    info = {"fit": str(args.fit), "data": args.data, "model": "hmm", "guide": guide,
            "k": int(model.n_components), "n": int(x.shape[0]),
            "n_sequences": 1 if lengths is None else int(lengths.numel()),
            "elbo": result["elbo"], "log_evidence": result["log_evidence"],
            "seconds": time.perf_counter() - started}  # fmt: skip
    if args.out is not None:
        with locked_out(args.out):
            write_set(args.out, lambda out: _write_prediction(out, result, info))
    where = f"-> {args.out}" if args.out is not None else "(pass --out DIR to save them)"
    print(f"hmm / {guide}: {info['n']} steps, log evidence {result['log_evidence']:.6g} {where}")
    return 0


def _write_prediction(out: Path, result: dict[str, Any], info: dict[str, Any]) -> None:
    write_npy(out / "labels.npy", result["labels"])
    write_npy(out / "responsibilities.npy", result["responsibilities"])
    write_json(out / "predict.json", info)
