"""What ``mixem fit``, ``compare`` and ``select`` share: the data, the starting model, the
outputs of one fit (written inside the output set that ``inference.outputs`` swaps in)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.data import load_array, to_tensor
from inference.em import FitResult
from inference.errors import MixemError
from inference.guides.amortised import write_encoder
from inference.init import kmeans, kmeans_plusplus, random_points, start_model
from inference.load import STATE_FILE
from inference.outputs import check_out, write_json, write_npy, write_npz, write_plot, write_text
from inference.params import get_params
from inference.runner import run_settings
from inference.scale import DataInfo
from inference.trace import csv_text, json_text, optional_values, plot_traces, to_rows
from inference.validation import check_data


def load_data(args: argparse.Namespace) -> torch.Tensor:
    x = to_tensor(load_array(args.data), args.dtype)
    check_data(x, args.k)
    return x


def initial_centres(spec: str, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(K, D) starting means from ``--init`` (kmeans: the centres of K-means from kmeans++)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if spec == "kmeans++":
        return kmeans_plusplus(x, k, generator)
    if spec == "kmeans":
        return kmeans(x, k, generator)[0]
    if spec == "random":
        return random_points(x, k, generator)
    if not spec.endswith(".npy"):
        raise MixemError(
            "--init must be kmeans++, kmeans, random, a .npy file of means or a .npz file of "
            f"params, got {spec!r}"
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
    """The starting model of ``args.model`` (a name of ``models.MODELS`` or a user's
    ``package.module:Class``, checked against the contract) for ``x`` (N, D)."""
    from inference.model_init import init_from_file, model_options
    from inference.user_model import build, check_contract, is_reference, resolve

    model_class = resolve(args.model)
    options = model_options(model_class, args)
    if args.init == "kmeans":  # gmm: GaussianMixture's init_params="kmeans" (from_labels)
        model = start_model(model_class, x, args.k, "kmeans", args.seed, options)
    else:
        from_file = args.init.endswith(".npz")  # named params; the rest start as with kmeans++
        centres = initial_centres("kmeans++" if from_file else args.init, x, args.k, args.seed)
        model = build(model_class, centres, x, options)
        if from_file:
            init_from_file(model, args.init)
    if is_reference(args.model):  # a user's model: its mistakes said before the fit runs
        check_contract(model, x, args.k, args.model)
    return model


def write_fit_outputs(
    out: Path,
    args: argparse.Namespace,
    x: torch.Tensor | DataInfo,
    result: FitResult,
    seconds: float,
    status: str = "completed",
    restarts: dict[str, Any] | None = None,
) -> None:
    """The files of one fit; ``restarts`` (``--n-init``: the kept seed and every start's seed
    and ELBO) goes into summary.json as it is."""
    rows = to_rows(result.trace)
    last = result.trace[-1]
    write_text(out / "trace.csv", csv_text(rows))
    write_text(out / "trace.json", json_text(rows))
    write_npy(out / "labels.npy", result.labels.cpu().numpy().astype(np.int64))
    write_npz(out / "params.npz", {k: v.cpu().numpy() for k, v in get_params(result.model).items()})
    # the unconstrained values and buffers: inference.load reads the parameters back bit for bit
    state = {k: v.detach().cpu().numpy() for k, v in result.model.state_dict().items()}
    write_npz(out / STATE_FILE, state)
    if getattr(args, "save_responsibilities", False):  # (N, K) q of the final E-step
        q = result.q.dense(int(result.model.n_components))
        write_npy(out / "responsibilities.npy", q.detach().cpu().numpy())
    write_encoder(out, result.guide)  # an amortised guide's network, for predict and --resume
    write_plot(out / "trace.png", lambda p: plot_traces({args.guide: result.trace}, p))
    summary = {
        "status": status,
        **run_settings(args, x),  # what --resume checks against
        "n_iter": result.n_iter,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "elbo": last.elbo,
        "log_evidence": last.log_evidence,
        **optional_values(last),  # an amortised guide's amortisation_gap
        "seconds": seconds,
        **{key: getattr(args, key, None) for key in ("seed", "init", "tol", "max_iter")},
        "versions": versions(),
        "command": command_line(args),
        **(restarts or {}),
    }
    write_json(out / "summary.json", summary)


def versions() -> dict[str, str]:
    """The versions a result was computed with: mixem, torch, pyro, python."""
    import pyro

    return {
        "mixem": mixem_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
    }


def mixem_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mixem")
    except PackageNotFoundError:
        return "unknown"


def command_line(args: argparse.Namespace) -> list[str]:
    """The command as typed (``inference.cli.main`` keeps its argv in ``args.argv``)."""
    argv = getattr(args, "argv", None)
    return ["mixem", *(sys.argv[1:] if argv is None else argv)]


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def check_overwrite(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` that exists and is not empty unless ``--force``; the directory that
    ``--resume`` continues (an interrupted fit's own) is not refused.

    Raises:
        MixemError: one line saying to pass --force or choose another directory (what
            ``check_out`` refuses even with --force, e.g. foreign files, gets its message).
    """
    out = getattr(args, "out", None)
    if out is None or args.command == "demo" or getattr(args, "force", False):
        return
    target = _resolved(out)
    if not target.is_dir() or not any(target.iterdir()):
        return
    resume = getattr(args, "resume", None)
    if resume is not None and _resolved(resume) == target:
        return
    check_out(out)
    raise MixemError(
        f"--out {out}: exists and is not empty; pass --force to replace what it holds or "
        "choose another directory"
    )
