"""Errors raised for bad input: each message says what is wrong and how to fix it."""

from __future__ import annotations


class MixemError(ValueError):
    """Bad input or configuration. The CLI prints its message on one line and exits with 2."""


class NonFiniteError(MixemError):
    """The ELBO became NaN or infinite; ``trace`` holds the records computed before it."""

    def __init__(self, message: str, trace: list | None = None) -> None:
        super().__init__(message)
        self.trace = trace or []
