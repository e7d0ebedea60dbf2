"""Per-iteration records of a fit: one per E-step, saved as CSV/JSON and plotted."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from inference.outputs import finite_or_none


class TraceRecord(NamedTuple):
    """Taken right after an E-step, for the parameters theta_t that this E-step used.

    iteration: t, the number of M-steps before this E-step (0 = the initial parameters).
    elbo: L(q_t, theta_t).
    log_evidence: log p(X | theta_t).
    kl_gap: log_evidence - elbo = KL(q_t || posterior) >= 0 (0 for the exact posterior).
    n_changed: points whose most probable component differs from the previous E-step's
        (all N at t = 0).
    n_relocated: empty components refilled by the M-step before this E-step.
    seconds: wall time of the whole iteration (M-step and E-step; init and E-step at t = 0).
    amortisation_gap: ELBO of the family's best member - ELBO_t at theta_t, >= 0, for a q
        from an encoder (``amortised``); NaN for the other families (their q is the best).
    """

    iteration: int
    elbo: float
    log_evidence: float
    kl_gap: float
    n_changed: int
    n_relocated: int
    seconds: float
    amortisation_gap: float = math.nan


FIELDS = list(TraceRecord._fields)
# columns written only for a trace that has a value in them (not NaN in every record)
OPTIONAL_FIELDS = ("amortisation_gap",)


def fields_of(traces: Iterable[Iterable[TraceRecord]]) -> list[str]:
    """The columns of ``traces`` written together: ``FIELDS`` without the optional ones that
    are NaN (or None, read back from JSON) in every record of every trace."""
    records = [record for trace in traces for record in trace]

    def used(name: str) -> bool:
        values = (getattr(record, name) for record in records)
        return any(value is not None and not math.isnan(value) for value in values)

    return [name for name in FIELDS if name not in OPTIONAL_FIELDS or used(name)]


def optional_values(record: TraceRecord) -> dict[str, float]:
    """``record``'s optional fields that hold a value (for a summary's final numbers)."""
    values = {name: getattr(record, name) for name in OPTIONAL_FIELDS}
    return {name: value for name, value in values.items() if not math.isnan(value)}


def to_rows(
    trace: Sequence[TraceRecord], fields: Sequence[str] | None = None, **extra: Any
) -> list[dict[str, Any]]:
    """Records as dicts, with constant ``extra`` columns first (e.g. ``guide="delta"``);
    ``fields``: the columns (default: ``fields_of([trace])``)."""
    names = fields_of([trace]) if fields is None else fields
    return [{**extra, **{name: getattr(record, name) for name in names}} for record in trace]


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as CSV with a header (columns in the order of the first row)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def json_text(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a JSON list (non-finite floats as null, so every reader accepts it)."""
    return json.dumps(finite_or_none(list(rows)), indent=1, allow_nan=False) + "\n"


def plot_traces(
    traces: dict[str, Sequence[TraceRecord]], path: str | Path, title: str = "ELBO per iteration"
) -> None:
    """Overlay ELBO traces (solid) and log evidence (dashed, same colour), one per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, trace) in enumerate(traces.items()):
        colour = f"C{i % 10}"
        steps = [r.iteration for r in trace]
        ax.plot(steps, [r.elbo for r in trace], "-o", ms=3, color=colour, label=f"{label}: ELBO")
        ax.plot(
            steps,
            [r.log_evidence for r in trace],
            "--",
            color=colour,
            alpha=0.7,
            label=f"{label}: log p(X | theta)",
        )
    ax.set_xlabel("iteration (M-steps done)")
    ax.set_ylabel("nats")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_evidence(value: float) -> str:
    """A record's log evidence for a message; a truncated search (``topk:k:G``) computes none
    after its first E-step (NaN)."""
    return "not computed" if math.isnan(value) else f"{value:.6g}"
