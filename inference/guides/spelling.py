"""How guide names spell their arguments: numbers both ways and the shared argument checks."""

from __future__ import annotations

from inference.errors import MixemError


def format_number(value: float) -> str:
    """Shortest spelling of ``value`` that parses back to it (``0.5``, ``2``, ``0.1234567891``)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def parse_float(text: str) -> float | None:
    """``text`` as a float, or None."""
    try:
        return float(text)
    except ValueError:
        return None


def parse_int(text: str) -> int | None:
    """``text`` as an int (digits with an optional sign), or None."""
    return int(text) if text.strip().lstrip("+-").isdigit() else None


def required_argument(spec: str, arg: str | None, what: str, allowed: str) -> str:
    """``arg``, the text after ``NAME:`` in ``spec``; a one-line error when there is none."""
    if not arg:
        raise MixemError(f"guide {spec!r} needs {what}: {allowed}")
    return arg


def no_argument(spec: str, arg: str | None, name: str) -> None:
    """Check that ``spec`` is the bare ``name`` (``arg`` None: no colon)."""
    if arg is not None:
        raise MixemError(f"guide {name!r} takes no argument, got {spec!r}")
