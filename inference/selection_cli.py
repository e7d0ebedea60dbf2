"""``mixem select``: fit every K of a range, choose one by a criterion, write the sweep and the
chosen fit into ``--out`` as one set (``inference.outputs.write_set``).

A first SIGINT / SIGTERM stops the sweep during the fit in progress (that K is dropped) and the
K's finished are written (``select.csv``, ``select.png``), exit 130 / 143; before the sweep starts
(loading) the run ends at once with nothing written, as ``fit`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

from inference.data import load_array, to_tensor
from inference.errors import MixemError
from inference.fit_io import build_model, write_fit_outputs
from inference.guides import parse_guide
from inference.outputs import check_out, locked_out, write_json, write_plot, write_set, write_text
from inference.runner import deferred_signals, signal_hook_for_tests
from inference.selection import COLUMNS, Candidate, split_heldout, sweep
from inference.trace import csv_text
from inference.validation import check_data

LABELS = {"bic": "BIC", "aic": "AIC", "icl": "ICL"}


def plot_selection(
    rows: list[dict[str, Any]], criterion: str, chosen: int | None, path: str
) -> None:
    """BIC, AIC, ICL over K (and the held-out log-likelihood per point on a second axis when
    computed); the chosen K marked by a vertical line (none while the sweep is unfinished)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = [row["k"] for row in rows]
    for i, (name, label) in enumerate(LABELS.items()):
        style = "-o" if name == criterion else "--o"
        ax.plot(ks, [row[name] for row in rows], style, ms=4, color=f"C{i}", label=label)
    ax.set_xlabel("K (number of components)")
    ax.set_ylabel("criterion (lower is better)")
    if criterion == "heldout":
        right = ax.twinx()
        held = [row["heldout_log_likelihood"] for row in rows]
        right.plot(ks, held, "-s", ms=4, color="C3", label="held-out log p(x) per point")
        right.set_ylabel("held-out log-likelihood per point (higher is better)")
        right.legend(loc="upper right", fontsize=8)
    if chosen is not None:
        ax.axvline(chosen, color="k", lw=1, alpha=0.6)
        ax.set_title(f"K = {chosen} chosen by {criterion}")
    else:
        ax.set_title("interrupted: the K's finished")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _for_k(args: argparse.Namespace, k: int, seed: int) -> argparse.Namespace:
    """``args`` as ``mixem fit --k k --seed seed`` would have them."""
    return argparse.Namespace(**{**vars(args), "k": k, "seed": seed})


def _write(
    out: Path,
    args: argparse.Namespace,
    x: Any,
    rows: list[dict[str, Any]],
    best: Candidate | None,
    seconds: float,
) -> None:
    """select.csv and select.png; with ``best``, its fit's outputs as ``mixem fit`` writes them
    (summary.json with a "selection" entry: criterion, range, restarts, the kept seed)."""
    chosen = None if best is None else int(best.row["k"])
    write_text(out / "select.csv", csv_text([{c: row[c] for c in COLUMNS} for row in rows]))
    write_plot(out / "select.png", lambda p: plot_selection(rows, args.criterion, chosen, p))
    if best is None:
        return
    write_fit_outputs(out, _for_k(args, best.row["k"], best.seed), x, best.result, seconds)
    summary = json.loads((out / "summary.json").read_text())
    summary["selection"] = {
        "criterion": args.criterion,
        "k_range": [args.k.start, args.k[-1]],
        "restarts": args.restarts,
        "seed": best.seed,
        "heldout_fraction": args.heldout_fraction if args.criterion == "heldout" else None,
    }
    write_json(out / "summary.json", summary)


def _progress(total: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="select",
        unit="fit",
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
    )


def _checked_args(args: argparse.Namespace) -> None:
    """What can be refused before the data is read."""
    if args.model == "hmm":
        raise MixemError("select sweeps the K of a mixture; --model hmm is not one of them yet")
    if args.lengths is not None or args.emission is not None:
        raise MixemError("--lengths and --emission apply to --model hmm only")
    if args.init.endswith((".npy", ".npz")):
        raise MixemError(
            f"--init {args.init}: a file of starting parameters fixes K; select takes "
            "--init kmeans++ or random"
        )
    for k in (args.k.start, args.k[-1]):  # a bound such as topk:k <= K fails on the first K
        guide = parse_guide(args.guide, k, args.seed)
    args.guide = guide.name  # the label in outputs, normalised as fit does


def run_select(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _checked_args(args)
    ks = args.k
    check_out(args.out)
    with deferred_signals() as flag, locked_out(args.out):
        flag.deferring = False  # loading: a signal ends the run at once, nothing written
        x = to_tensor(load_array(args.data), args.dtype)
        check_data(x, 1)
        heldout = None
        if args.criterion == "heldout":
            x, heldout = split_heldout(x, args.heldout_fraction, args.seed)
        if ks[-1] > x.shape[0]:
            rows_kind = "training rows" if heldout is not None else "points"
            raise MixemError(
                f"--k {ks.start}:{ks[-1]}: the largest K ({ks[-1]}) exceeds the number of "
                f"{rows_kind} ({x.shape[0]}); use K <= {x.shape[0]}"
            )
        with _progress(len(ks) * args.restarts, args.quiet) as bar:
            flag.deferring = True
            rows, best = sweep(
                x,
                ks,
                lambda k, seed: build_model(_for_k(args, k, seed), x),
                lambda k, seed: parse_guide(args.guide, k, seed),
                criterion=args.criterion,
                restarts=args.restarts,
                seed=args.seed,
                heldout=heldout,
                should_stop=flag.is_set,
                on_fit=lambda k, restart: bar.update(1),
                max_iter=args.max_iter,
                tol=args.tol,
                chunk_size=args.chunk_size,
                callback=signal_hook_for_tests(),
            )
        interrupted = flag.is_set()
        if rows:
            chosen = None if interrupted else best
            seconds = time.perf_counter() - started
            write_set(args.out, lambda out: _write(out, args, x, rows, chosen, seconds))
    if interrupted:
        done = f"select.csv of the {len(rows)} K's finished saved to {args.out}"
        print(
            f"mixem: interrupted by {flag.name} "
            + (f"after K = {rows[-1]['k']}; {done}" if rows else "before any K was finished"),
            file=sys.stderr,
        )
        return flag.exit_code
    assert best is not None, "ks is not empty"
    value = best.row["heldout_log_likelihood" if args.criterion == "heldout" else args.criterion]
    print(
        f"{args.model} / {args.guide}: K = {best.row['k']} chosen by {args.criterion} "
        f"({value:.6g}) among K = {ks.start}..{ks[-1]}, {args.restarts} restart(s) each "
        f"(seed {best.seed}) -> {args.out}"
    )
    return flag.exit_code if flag.is_set() else 0
