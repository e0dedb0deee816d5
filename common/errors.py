"""User-facing errors: one line each, naming the thing and the fix, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USAGE = 2

T = TypeVar("T")


class UserError(Exception):
    """A problem the user can fix. Each line of the message is one complete problem + fix."""

    def __init__(self, *problems: str):
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


def exits_cleanly(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI entry point: a UserError prints `error: ...` lines to stderr and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            for line in e.problems:
                print(f"error: {line}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None

    return wrapper
