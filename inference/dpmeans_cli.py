"""``mixem fit --dp-lambda LAMBDA [--max-k KMAX]``: DP-means from the command line.

The options are checked by ``inference.cli_dp_args.check_dp_options``; the outputs are those of a
fit (trace.csv / trace.json with the ``dp_objective`` column, labels.npy, params.npz with the
final K rows, summary.json with ``n_components``, trace.png), written as one set by the same
writers. A first Ctrl-C / SIGTERM during the loop stops after the iteration in progress and
saves it (``"status": "interrupted"``, exit 130 / 143); before the loop it ends the run at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.data import load_array, to_tensor
from inference.dpmeans import DPMeansRecord, DPMeansResult, dp_means, named_factory
from inference.load import STATE_FILE
from inference.outputs import (
    check_out,
    locked_out,
    write_json,
    write_npy,
    write_npz,
    write_plot,
    write_set,
    write_text,
)
from inference.params import get_params
from inference.runner import deferred_signals
from inference.scale import check_scale_options
from inference.trace import csv_text, json_text
from inference.validation import check_data


def plot_dp_trace(trace: list[DPMeansRecord], path: str) -> None:
    """The penalised objective (left axis) and K (right axis) per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [r.iteration for r in trace]
    ax.plot(steps, [r.dp_objective for r in trace], "-o", ms=3, label="sum D + lambda K")
    ax.set_xlabel("iteration (M-steps done)")
    ax.set_ylabel("DP-means objective")
    right = ax.twinx()
    right.step(steps, [r.n_components for r in trace], "C1--", where="post", label="K")
    right.set_ylabel("K")
    ax.set_title("DP-means per iteration")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_dp_outputs(
    out: Path, args: argparse.Namespace, x: torch.Tensor, result: DPMeansResult, status: str
) -> None:
    from inference.fit_io import command_line, versions

    rows = [record._asdict() for record in result.trace]
    write_text(out / "trace.csv", csv_text(rows))
    write_text(out / "trace.json", json_text(rows))
    write_npy(out / "labels.npy", result.labels.cpu().numpy().astype(np.int64))
    write_npz(out / "params.npz", {k: v.cpu().numpy() for k, v in get_params(result.model).items()})
    # the unconstrained values and buffers: inference.load reads the parameters back bit for bit
    state = {k: v.detach().cpu().numpy() for k, v in result.model.state_dict().items()}
    write_npz(out / STATE_FILE, state)
    write_plot(out / "trace.png", lambda p: plot_dp_trace(result.trace, p))
    last = result.trace[-1]
    summary: dict[str, Any] = {
        "status": status,
        "model": args.model,
        "guide": "delta",
        "dp_lambda": args.dp_lambda,
        "max_k": args.max_k,
        "n": x.shape[0],
        "d": x.shape[1],
        "dtype": str(x.dtype).removeprefix("torch."),
        "n_components": int(result.model.n_components),
        "n_iter": result.n_iter,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "dp_objective": last.dp_objective,
        "elbo": last.elbo,
        "log_evidence": last.log_evidence,
        "max_iter": args.max_iter,
        "versions": versions(),
        "command": command_line(args),
    }
    write_json(out / "summary.json", summary)


def run_dp_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    started = time.perf_counter()
    check_scale_options(args)
    named_factory(args.model)  # an unsupported model fails before the data is read
    check_out(args.out)
    with deferred_signals() as flag:
        flag.deferring = False
        with locked_out(args.out):
            x = to_tensor(load_array(args.data), args.dtype).to(torch.device(args.device))
            check_data(x, 1)
            quiet = args.quiet or not sys.stderr.isatty()
            with tqdm(desc="DP-means", unit="it", file=sys.stderr, disable=quiet) as bar:
                flag.deferring = True
                result = dp_means(
                    args.model,
                    x,
                    args.dp_lambda,
                    max_k=args.max_k,
                    max_iter=args.max_iter,
                    callback=lambda record: bar.update(1),
                    should_stop=flag.is_set,
                )
            status = "interrupted" if result.stop_reason == "interrupted" else "completed"
            write_set(args.out, lambda out: write_dp_outputs(out, args, x, result, status))
    seconds = time.perf_counter() - started
    if status == "interrupted":
        print(f"mixem: interrupted by {flag.name}; saved to {args.out}", file=sys.stderr)
        return flag.exit_code
    last = result.trace[-1]
    print(
        f"{args.model} / DP-means (lambda {args.dp_lambda:g}): K = {result.model.n_components}, "
        f"{result.n_iter} M-steps, {result.stop_reason}; objective {last.dp_objective:.6g} "
        f"({seconds:.2f} s) -> {args.out}"
    )
    return 0
