"""The one exception type for mistakes a user can fix, and how it reads on the console."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

COMMAND_LINE = "command line"
# Where a config key came from: (file or "command line", line number or None).
Locate = Callable[[str], "tuple[str, int | None]"]


class HparamSearchError(Exception):
    """A mistake the user can fix: bad YAML, a bad ``--set``, a study that does not fit.

    Renders as one paragraph: ``source:line: key: problem (got ...). fix``.

    Args:
        problem: what is wrong, in a few words.
        source: the file (or "command line") the mistake is in.
        key: the dotted key the mistake is at.
        line: 1-based line in ``source`` when known.
        got: the offending value, shown with ``repr``-like quoting.
        fix: what to do about it.
    """

    _MISSING = object()

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        key: str | None = None,
        line: int | None = None,
        got: object = _MISSING,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.source = source
        self.key = key
        self.line = line
        self.got = got
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.source:
            where = self.source if self.line is None else f"{self.source}:{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        got = "" if self.got is HparamSearchError._MISSING else f" (got {_show(self.got)})"
        fix = f" {self.fix}" if self.fix else ""
        text = f"{self.problem.rstrip('.')}{got}"
        end = "" if text.endswith(("?", "!")) else "."  # no "?." when the problem asks
        return f"{where}{key}{text}{end}{fix}"


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if not isinstance(value, (int, float)) else str(value)


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """A "Did you mean 'x'?" sentence, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=cutoff)
    if not close:
        return ""
    return "Did you mean " + " or ".join(repr(c) for c in close) + "?"


def fail_at(locate: Locate, key: str, problem: str,
            got: Any = HparamSearchError._MISSING, fix: str | None = None) -> NoReturn:
    """Raise the error for ``key``, at the file and line ``locate`` finds it in."""
    source, line = locate(key)
    raise HparamSearchError(problem, source=source, key=key, line=line, got=got, fix=fix)
