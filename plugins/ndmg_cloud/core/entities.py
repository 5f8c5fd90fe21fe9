"""BIDS entity parsing of S3 keys, driven by pybids' own configuration.

pybids' ``parse_file_entities`` runs every entity regex of its config on a path, after
building a ``BIDSFile`` (a UPath) and, unless given entities, reloading the config: about
1,000 keys/s. Here the same entities (same regexes, same order, same dtypes) are loaded
once, and an entity whose pattern needs a literal such as ``acq-`` is only searched when
that literal is in the path. A regex can only match where its mandatory literal occurs, so
the result is identical to pybids' on every path (``tests/test_entities.py`` checks that
property on generated keys).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

try:  # Python 3.11+: the parser moved to a private module of ``re``.
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse

PYBIDS_CONFIGS = ("bids", "derivatives")


@dataclass(frozen=True)
class _EntityMatcher:
    name: str
    regex: re.Pattern[str]
    cast: Callable[[str], Any] | None
    required: str  # a substring every match contains; "" when none is known

    def match(self, path: str) -> Any:
        if self.required and self.required not in path:
            return None
        m = self.regex.search(path)
        if m is None:
            return None
        value = m.group(1)
        return self.cast(value) if self.cast is not None else value


def _required_literal(regex: re.Pattern[str]) -> str:
    """The longest run of literal characters at the top level of the pattern.

    Top-level items of a regex are all mandatory, so a match always contains that run.
    Case-insensitive patterns get no literal: ``in`` would be case-sensitive.
    """
    if regex.flags & re.IGNORECASE:
        return ""
    best, run = "", []
    for op, arg in sre_parse.parse(regex.pattern):
        if op is sre_parse.LITERAL:
            run.append(chr(arg))
            continue
        if len(run) > len(best):
            best = "".join(run)
        run = []
    if len(run) > len(best):
        best = "".join(run)
    return best


@cache
def _matchers() -> tuple[_EntityMatcher, ...]:
    from bids.layout.models import Config

    # pybids merges configs into one dict in order, later names replacing earlier ones.
    entities: dict[str, Any] = {}
    for name in PYBIDS_CONFIGS:
        entities.update(Config.load(name).entities)
    matchers = []
    for ent in entities.values():
        if ent.regex is None:
            continue
        matchers.append(
            _EntityMatcher(
                name=ent.name,
                regex=ent.regex,
                cast=ent.dtype if callable(ent.dtype) and ent.dtype is not str else None,
                required=_required_literal(ent.regex),
            )
        )
    return tuple(matchers)


def parse_entities(path: str) -> dict[str, Any]:
    """Entities of ``path`` exactly as ``bids.layout.parse_file_entities(path)`` returns them.

    Pass keys relative to the dataset root with a leading ``/`` (``/sub-01/dwi/...``):
    pybids' subject pattern needs a separator before ``sub-``.
    """
    found = {}
    for matcher in _matchers():
        value = matcher.match(path)
        if value is not None:
            found[matcher.name] = value
    return found
