"""Event topics and subscription patterns: the MQTT 3.1.1/5.0 topic grammar (spec section 4.7).

A *topic* is 1-256 printable characters split into levels by ``/`` (empty levels are allowed,
as in MQTT: ``/finance`` has the levels ``""`` and ``"finance"``); a published topic contains no
wildcard. A *pattern* may use ``+`` (exactly one whole level) and ``#`` (the last level only:
that level's parent and every level below it). As in MQTT, a pattern starting with a wildcard does
not match a topic starting with ``$`` (reserved for the system: ``$SYS/...``).

Pure functions: ``crdt`` validates the patterns of subscription records with them and
``mesh.events`` matches events against them.
"""

from __future__ import annotations

import re

from model.errors import SpecError

__all__ = ["MAX_TOPIC_LEN", "META_KEY_RE", "matches", "validate_pattern", "validate_topic"]

MAX_TOPIC_LEN = 256
# An event metadata key (and the key of a subscription's ``where`` filter).
META_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _check_text(s: object, what: str) -> str:
    if not isinstance(s, str) or not 1 <= len(s) <= MAX_TOPIC_LEN:
        raise SpecError(f"{what} must be 1-{MAX_TOPIC_LEN} characters")
    if _CONTROL.search(s):
        raise SpecError(f"{what} {s!r:.60} contains control characters")
    return s


def validate_topic(topic: object) -> str:
    """A topic events may be published on (no wildcards); SpecError naming the problem otherwise."""
    t = _check_text(topic, "topic")
    if "+" in t or "#" in t:
        raise SpecError(f"topic {t!r:.60} contains a wildcard (+ or #): wildcards are for subscription patterns")
    return t


def validate_pattern(pattern: object) -> str:
    """A subscription pattern: ``+`` fills a whole level, ``#`` only as the whole last level."""
    p = _check_text(pattern, "topic pattern")
    levels = p.split("/")
    for i, lv in enumerate(levels):
        if "#" in lv and (lv != "#" or i != len(levels) - 1):
            raise SpecError(f"topic pattern {p!r:.60}: '#' must be the whole last level (e.g. sport/#)")
        if "+" in lv and lv != "+":
            raise SpecError(f"topic pattern {p!r:.60}: '+' must be a whole level (e.g. sport/+/player1)")
    return p


def matches(pattern: str, topic: str) -> bool:
    """True if ``topic`` matches ``pattern`` (both assumed valid; see the module docstring)."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    pl = pattern.split("/")
    tl = topic.split("/")
    for i, p in enumerate(pl):
        if p == "#":
            return True  # "sport/#" matches "sport" too: i == len(tl) is fine here
        if i >= len(tl):
            return False
        if p != "+" and p != tl[i]:
            return False
    return len(pl) == len(tl)
