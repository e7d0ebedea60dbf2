"""What ``mixem fit``, ``compare`` and ``select`` share: the data, the starting model, the
outputs of one fit (written inside the output set that ``inference.outputs`` swaps in)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.cli_args import model_names
from inference.data import load_array, to_tensor
from inference.em import FitResult
from inference.errors import MixemError
from inference.init import kmeans_plusplus, random_points
from inference.outputs import write_json, write_npy, write_npz, write_plot, write_text
from inference.params import get_params
from inference.runner import run_settings
from inference.scale import DataInfo
from inference.trace import csv_text, json_text, plot_traces, to_rows
from inference.validation import check_data


def load_data(args: argparse.Namespace) -> torch.Tensor:
    x = to_tensor(load_array(args.data), args.dtype)
    check_data(x, args.k)
    return x


def initial_centres(spec: str, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(K, D) starting means from ``--init``."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if spec == "kmeans++":
        return kmeans_plusplus(x, k, generator)
    if spec == "random":
        return random_points(x, k, generator)
    if not spec.endswith(".npy"):
        raise MixemError(
            f"--init must be kmeans++, random, a .npy file of means or a .npz file of params, "
            f"got {spec!r}"
        )
    centres = to_tensor(load_array(spec), str(x.dtype).removeprefix("torch."))
    if tuple(centres.shape) != (k, x.shape[1]):
        raise MixemError(
            f"--init {spec}: shape {tuple(centres.shape)} does not match "
            f"(K, D) = ({k}, {x.shape[1]})"
        )
    if not bool(torch.isfinite(centres).all()):
        raise MixemError(f"--init {spec}: contains NaN or inf")
    return centres


def build_model(args: argparse.Namespace, x: torch.Tensor) -> Any:
    from models import MODELS

    if args.model not in MODELS:
        raise MixemError(f"unknown model {args.model!r}; choose one of: {', '.join(model_names())}")
    from inference.model_init import init_from_file, model_options

    model_class = MODELS[args.model]
    from_file = args.init.endswith(".npz")  # named params; the rest start as with kmeans++
    centres = initial_centres("kmeans++" if from_file else args.init, x, args.k, args.seed)
    model = model_class.from_centres(centres, x, **model_options(model_class, args))
    if from_file:
        init_from_file(model, args.init)
    return model


def write_fit_outputs(
    out: Path,
    args: argparse.Namespace,
    x: torch.Tensor | DataInfo,
    result: FitResult,
    seconds: float,
    status: str = "completed",
) -> None:
    rows = to_rows(result.trace)
    last = result.trace[-1]
    write_text(out / "trace.csv", csv_text(rows))
    write_text(out / "trace.json", json_text(rows))
    write_npy(out / "labels.npy", result.labels.cpu().numpy().astype(np.int64))
    write_npz(out / "params.npz", {k: v.cpu().numpy() for k, v in get_params(result.model).items()})
    write_plot(out / "trace.png", lambda p: plot_traces({args.guide: result.trace}, p))
    summary = {
        "status": status,
        **run_settings(args, x),  # what --resume checks against
        "n_iter": result.n_iter,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "elbo": last.elbo,
        "log_evidence": last.log_evidence,
        "seconds": seconds,
    }
    write_json(out / "summary.json", summary)
