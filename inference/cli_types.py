"""The CLI's option value types: each refuses a bad value with argparse's one-line message."""

from __future__ import annotations

import argparse

INT64_MAX = 2**63 - 1  # torch's seeds, sizes and counts are 64-bit


def integer(text: str, low: int, expected: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if int(text) > INT64_MAX:
        raise argparse.ArgumentTypeError(f"expected {expected} below 2**63, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    return integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return integer(text, 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value
