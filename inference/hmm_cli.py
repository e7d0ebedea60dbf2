"""``mixem fit --model hmm`` and ``mixem compare --model hmm``: HMMs from the command line.

    mixem fit --model hmm --emission gaussian|bernoulli|poisson|categorical \\
        --guide delta|categorical|tempered:T|sampled --k K --data X.npy [--lengths L.npy]

The fit is ``inference.hmm.fit_hmm``; the outputs are a mixture fit's (trace.csv / trace.json
with ``elbo`` and ``log_evidence`` per E-step, labels.npy with the most probable state of each
row, the path itself for delta and sampled, params.npz with ``startprob``, ``transmat`` and the
emission's parameters under the mixtures' names, summary.json, trace.png), written as one set.
``--init`` takes kmeans++ / random (the emission's start, uniform startprob and transmat) or an
``.npz`` of those names. A first Ctrl-C / SIGTERM during the loop stops after the iteration in
progress and saves it (``"status": "interrupted"``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from inference.data import load_array, to_tensor
from inference.errors import MixemError
from inference.hmm import HMMFitResult, fit_hmm, parse_guide
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
from inference.runner import deferred_signals
from inference.trace import csv_text, json_text, plot_traces, to_rows

HMM_OPTIONS = ("covariance_type", "covars_prior", "covars_weight")

# fit's options that an HMM fit does not take: (argparse dest, flag, its default)
NOT_FOR_HMM = (
    ("anneal", "--anneal", None),
    ("stream", "--stream", False),
    ("distributed", "--distributed", False),
    ("batch_size", "--batch-size", None),
    ("resume", "--resume", None),
    ("dp_lambda", "--dp-lambda", None),
    ("save_responsibilities", "--save-responsibilities", False),
    ("fixed_weights", "--fixed-weights", False),
    ("dp_concentration", "--dp-concentration", 1.0),
    ("shared_concentration", "--shared-concentration", False),
)


def check_hmm_options(args: argparse.Namespace) -> None:
    """One-line errors for options that do not apply to ``--model hmm`` (and the reverse)."""
    if args.model != "hmm":
        for dest, flag in (("lengths", "--lengths"), ("emission", "--emission")):
            if getattr(args, dest, None) is not None:
                raise MixemError(f"{flag} applies to --model hmm only")
        return
    for dest, flag, default in NOT_FOR_HMM:
        if getattr(args, dest, default) != default:
            raise MixemError(f"{flag} does not apply to --model hmm")


def load_sequences(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows (N, D) and the sequence lengths (S,) (None: one sequence)."""
    x = to_tensor(load_array(args.data), args.dtype)
    if args.lengths is None:
        return x, None
    lengths = load_array(args.lengths)
    if lengths.dtype.kind not in "iu" and not np.array_equal(lengths, np.round(lengths)):
        raise MixemError(f"--lengths {args.lengths}: lengths must be whole numbers")
    return x, torch.as_tensor(np.asarray(lengths).astype(np.int64).reshape(-1))


def build_hmm(args: argparse.Namespace, x: torch.Tensor) -> Any:
    """The starting HMM: k-means++ / random rows for the emission, or an ``.npz`` of params."""
    from inference.fit_io import initial_centres
    from inference.model_init import init_from_file
    from models.hmm import HMM

    if not 1 <= args.k <= x.shape[0]:
        raise MixemError(
            f"--k must be between 1 and the number of rows ({x.shape[0]}), got {args.k}"
        )
    emission = args.emission or "gaussian"
    options: dict[str, Any] = {}
    if emission == "gaussian":
        options["covariance_type"] = args.covariance
    from_file = args.init.endswith(".npz")
    centres = initial_centres("kmeans++" if from_file else args.init, x, args.k, args.seed)
    model = HMM.from_centres(centres, x, emission, **options)
    if from_file:
        init_from_file(model, args.init)
    return model


def write_hmm_outputs(
    out: Path, args: argparse.Namespace, x: torch.Tensor, result: HMMFitResult, status: str
) -> None:
    rows = to_rows(result.trace)
    from inference.fit_io import command_line, versions

    write_text(out / "trace.csv", csv_text(rows))
    write_text(out / "trace.json", json_text(rows))
    write_npy(out / "labels.npy", result.labels.cpu().numpy().astype(np.int64))
    write_npz(out / "params.npz", {k: v.cpu().numpy() for k, v in result.model.params().items()})
    # the unconstrained values and buffers: inference.load reads the parameters back bit for bit
    state = {k: v.detach().cpu().numpy() for k, v in result.model.state_dict().items()}
    write_npz(out / STATE_FILE, state)
    write_plot(out / "trace.png", lambda p: plot_traces({args.guide: result.trace}, p))
    last = result.trace[-1]
    model = result.model
    summary = {
        "status": status,
        "model": "hmm",
        "emission": result.model.emission_name,
        "guide": args.guide,
        "k": args.k,
        "n": x.shape[0],
        "d": x.shape[1] if x.dim() > 1 else 1,
        "n_sequences": 1 if args.lengths is None else int(load_array(args.lengths).size),
        "dtype": str(x.dtype).removeprefix("torch."),
        "init": args.init,
        "seed": args.seed,
        "tol": args.tol,
        "max_iter": args.max_iter,
        "n_iter": result.n_iter,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "elbo": last.elbo,
        "log_evidence": last.log_evidence,
        "model_options": {  # what inference.load rebuilds the model with
            "emission": model.emission_name,
            **{k: getattr(model.emission, k) for k in HMM_OPTIONS if hasattr(model.emission, k)},
        },
        "versions": versions(),
        "command": command_line(args),
    }
    write_json(out / "summary.json", summary)


def run_hmm_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    started = time.perf_counter()
    check_hmm_options(args)
    parse_guide(args.guide, args.seed)  # a bad guide fails before the data is read
    check_out(args.out)
    with deferred_signals() as flag:
        flag.deferring = False
        with locked_out(args.out):
            x, lengths = load_sequences(args)
            model = build_hmm(args, x)
            quiet = args.quiet or not sys.stderr.isatty()
            with tqdm(desc="EM", unit="it", file=sys.stderr, disable=quiet) as bar:
                flag.deferring = True
                result = fit_hmm(
                    model,
                    x,
                    lengths,
                    args.guide,
                    max_iter=args.max_iter,
                    tol=args.tol,
                    seed=args.seed,
                    callback=lambda record: bar.update(1),
                    should_stop=flag.is_set,
                )
            status = "interrupted" if result.stop_reason == "interrupted" else "completed"
            write_set(args.out, lambda out: write_hmm_outputs(out, args, x, result, status))
    if status == "interrupted":
        print(f"mixem: interrupted by {flag.name}; saved to {args.out}", file=sys.stderr)
        return flag.exit_code
    last = result.trace[-1]
    print(
        f"hmm ({model.emission_name}) / {args.guide}: {result.n_iter} M-steps, "
        f"{result.stop_reason}; ELBO {last.elbo:.6g}, log evidence {last.log_evidence:.6g} "
        f"({time.perf_counter() - started:.2f} s) -> {args.out}"
    )
    return 0


def run_hmm_compare(args: argparse.Namespace, specs: list[str]) -> int:
    """Every guide from the same start; DIR is written once all fits have succeeded."""
    from inference.compare import write_compare_outputs

    started = time.perf_counter()
    check_hmm_options(args)
    for spec in specs:
        parse_guide(spec, args.seed)
    if len(set(specs)) != len(specs):
        raise MixemError("a guide is listed twice; each guide is fitted once")
    check_out(args.out)
    with deferred_signals() as flag, locked_out(args.out):
        flag.deferring = False
        x, lengths = load_sequences(args)
        start = build_hmm(args, x)
        results = {
            spec: fit_hmm(
                copy.deepcopy(start),
                x,
                lengths,
                spec,
                max_iter=args.max_iter,
                tol=args.tol,
                seed=args.seed,
            )
            for spec in specs
        }
        info = {"model": "hmm", "emission": start.emission_name, "k": args.k, "n": x.shape[0],
                "init": args.init, "seed": args.seed, "max_iter": args.max_iter, "tol": args.tol,
                "seconds": time.perf_counter() - started}  # fmt: skip
        flag.deferring = True
        lines: list[str] = []
        write_set(
            args.out, lambda out: lines.extend(write_compare_outputs(out, cast(Any, results), info))
        )
    for line in [*lines[:-1], f"-> {args.out}"]:
        print(line)
    return flag.exit_code if flag.is_set() else 0


def add_hmm_options(parser: argparse.ArgumentParser) -> None:
    """``--emission`` and ``--lengths``, the options of ``--model hmm``."""
    parser.add_argument(
        "--emission",
        choices=["gaussian", "bernoulli", "poisson", "categorical"],
        default=None,
        help="hmm: the emission family (default: gaussian; --covariance full or diag)",
    )
    parser.add_argument(
        "--lengths",
        default=None,
        metavar="PATH",
        help="hmm: .npy or .csv of the sequence lengths, in the order of the rows of --data "
        "(default: one sequence)",
    )
