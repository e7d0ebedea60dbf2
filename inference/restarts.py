"""``n_init`` restarts: fit from several seeded starts, keep the one with the best final ELBO.

The seeds: ``MixtureEM(random_state=R, n_init=n)`` takes successive ``randint(2**31 - 1)``
draws of ``check_random_state(R)`` (``inference.estimator_init.start_seeds``; the first is an
``n_init=1`` fit's seed); ``mixem fit --seed S --n-init n`` takes S, S + 1, ..., S + n - 1 (as
``mixem select --restarts``), so ``mixem fit --seed S+r`` refits restart r alone. Ties keep the
earlier start, as scikit-learn does. An interrupted restart ends the loop: it is what is kept
(its state is that of the last completed iteration, as for a single fit).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from inference.cli_types import positive_int
from inference.errors import MixemError

if TYPE_CHECKING:
    from inference.em import FitResult


class Start(NamedTuple):
    """One restart: its seed, its final ELBO (total), M-steps and why it stopped."""

    seed: int
    elbo: float
    n_iter: int
    stop_reason: str

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


def best_of(
    seeds: Sequence[int], run: Callable[[int], FitResult]
) -> tuple[FitResult, int, list[Start]]:
    """(the kept result, its seed, every start) of ``run(seed)`` over ``seeds`` (module doc)."""
    if not seeds:
        raise MixemError("n_init must be a positive integer, got 0")
    kept: tuple[FitResult, int] | None = None
    starts: list[Start] = []
    for seed in seeds:
        result = run(seed)
        elbo = float(result.trace[-1].elbo)
        starts.append(Start(int(seed), elbo, int(result.n_iter), result.stop_reason))
        if result.stop_reason == "interrupted":
            return result, int(seed), starts
        if kept is None or elbo > kept[0].trace[-1].elbo:
            kept = (result, int(seed))
    assert kept is not None
    return kept[0], kept[1], starts


def add_restart_option(parser: argparse.ArgumentParser) -> None:
    """``mixem fit --n-init R``."""
    parser.add_argument(
        "--n-init",
        type=positive_int,
        default=1,
        metavar="R",
        help="fit from R starts with the seeds --seed, --seed + 1, ...; keep the best final "
        "ELBO; summary.json lists each start's seed and ELBO (default: 1)",
    )


def cli_seeds(seed: int, n_init: int) -> list[int]:
    """``mixem fit --seed S --n-init n``: S, S + 1, ..., S + n - 1."""
    return [seed + r for r in range(n_init)]


def check_restart_options(args: argparse.Namespace) -> None:
    """``--n-init`` > 1 applies to a mixture fit from a start the seed draws."""
    n_init = getattr(args, "n_init", 1)
    if n_init == 1:
        return
    if args.model == "hmm":
        raise MixemError("--n-init applies to mixtures; --model hmm fits one start")
    if getattr(args, "dp_lambda", None) is not None:
        raise MixemError("--n-init does not apply to --dp-lambda")
    if getattr(args, "resume", None) is not None:
        raise MixemError("--resume continues one fit; drop --n-init")
    if args.init.endswith((".npy", ".npz")):
        raise MixemError(f"--init {args.init}: a file is one start; drop --n-init")


def start_models(
    args: argparse.Namespace, rows: Any, build: Callable[[argparse.Namespace, Any], Any]
) -> Iterator[tuple[int, Any]]:
    """(seed, starting model) of each restart of ``cli_seeds``: the first built now (a signal
    while it is computed ends the run at once, as for one fit), the others when asked for;
    ``rows`` (what the starts are computed from) are kept only while a start is still to come."""
    seeds = cli_seeds(args.seed, getattr(args, "n_init", 1))
    first = (seeds[0], build(args, rows))
    return itertools.chain([first], _later(args, rows, build, seeds[1:]) if seeds[1:] else [])


def _later(
    args: argparse.Namespace,
    rows: Any,
    build: Callable[[argparse.Namespace, Any], Any],
    seeds: list[int],
) -> Iterator[tuple[int, Any]]:
    for seed in seeds:
        yield seed, build(argparse.Namespace(**{**vars(args), "seed": seed}), rows)


def cli_restarts(
    args: argparse.Namespace,
    models: Iterator[tuple[int, Any]],
    run: Callable[[int, Any], FitResult],
) -> tuple[FitResult, dict[str, Any]]:
    """``mixem fit --n-init R``: ``run(seed, model)`` for each of ``models``
    (``start_models``); (the kept result, what summary.json records of the restarts)."""
    n_init = getattr(args, "n_init", 1)
    result, kept, starts = best_of(cli_seeds(args.seed, n_init), lambda seed: run(*next(models)))
    restarts = [s.as_dict() for s in starts]
    return result, {"n_init": n_init, "kept_seed": kept, "restarts": restarts}
