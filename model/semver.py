"""A small strict semver 2.0.0 parser with npm-style ranges (^, ~, >=, >, <=, <, =, exact, *).

No dependency: the installed ``packaging`` implements PEP 440, whose ordering of
pre-releases and build metadata differs from semver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from model.errors import SemverError

_NUM = r"0|[1-9]\d*"
_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION_RE = re.compile(
    rf"^({_NUM})\.({_NUM})\.({_NUM})"
    rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
MAX_VERSION_LEN = 128


@total_ordering
@dataclass(slots=True, frozen=True)
class Version:
    """A semver version; ordering follows semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Version":
        """Parse ``MAJOR.MINOR.PATCH[-PRE][+BUILD]`` strictly."""
        if not isinstance(text, str) or len(text) > MAX_VERSION_LEN:
            raise SemverError(f"version must be a string of at most {MAX_VERSION_LEN} characters")
        m = _VERSION_RE.match(text)
        if m is None:
            raise SemverError(f"{text!r} is not a semver version (expected e.g. 1.2.3 or 1.2.3-rc.1)")
        pre = tuple(m.group(4).split(".")) if m.group(4) else ()
        build = tuple(m.group(5).split(".")) if m.group(5) else ()
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, build)

    def _key(self) -> tuple[object, ...]:
        # A release sorts after all its pre-releases; numeric identifiers sort before alphanumeric.
        pre: tuple[object, ...] = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def core(self) -> tuple[int, int, int]:
        """The (major, minor, patch) triple."""
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        s = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            s += "-" + ".".join(self.prerelease)
        if self.build:
            s += "+" + ".".join(self.build)
        return s


_OPS = (">=", "<=", ">", "<", "=", "^", "~")


@dataclass(slots=True, frozen=True)
class Range:
    """A conjunction of comparators, e.g. ``>=1.2.0 <2.0.0``; ``*`` matches every release."""

    text: str
    comparators: tuple[tuple[str, Version], ...]

    @classmethod
    def parse(cls, text: str) -> "Range":
        """Parse a range: space-separated comparators that must all hold."""
        if not isinstance(text, str) or not text.strip() or len(text) > 256:
            raise SemverError("version range must be a non-empty string of at most 256 characters")
        comps: list[tuple[str, Version]] = []
        for part in text.split():
            if part == "*":
                continue
            op = next((o for o in _OPS if part.startswith(o)), "=")
            rest = part[len(op):] if part.startswith(op) else part
            try:
                v = Version.parse(rest)
            except SemverError:
                raise SemverError(
                    f"{text!r} is not a version range (use e.g. 1.2.3, ^1.2.0, ~1.2.0, >=1.0.0 <2.0.0, *)"
                ) from None
            if op == "^":
                if v.major > 0:
                    upper = Version(v.major + 1, 0, 0)
                elif v.minor > 0:
                    upper = Version(0, v.minor + 1, 0)
                else:
                    upper = Version(0, 0, v.patch + 1)
                comps += [(">=", v), ("<", upper)]
            elif op == "~":
                comps += [(">=", v), ("<", Version(v.major, v.minor + 1, 0))]
            else:
                comps.append((op, v))
        return cls(text, tuple(comps))

    def matches(self, version: Version | str) -> bool:
        """True if the version satisfies every comparator.

        Pre-releases only match when a comparator names a pre-release of the same
        major.minor.patch (npm's rule), so ``^1.0.0`` never picks ``1.1.0-beta``.
        """
        v = Version.parse(version) if isinstance(version, str) else version
        if v.prerelease and not any(c.prerelease and c.core == v.core for _, c in self.comparators):
            return False
        for op, c in self.comparators:
            ok = {
                "=": v == c,
                ">=": v >= c,
                "<=": v <= c,
                ">": v > c,
                "<": v < c,
            }[op]
            if not ok:
                return False
        return True

    def best(self, versions: "list[Version] | list[str]") -> Version | None:
        """The highest version satisfying the range, or None."""
        parsed = [Version.parse(x) if isinstance(x, str) else x for x in versions]
        ok = [v for v in parsed if self.matches(v)]
        return max(ok) if ok else None

    def __str__(self) -> str:
        return self.text


def is_exact(text: str) -> bool:
    """True if ``text`` is a plain version rather than a range."""
    try:
        Version.parse(text)
        return True
    except SemverError:
        return False


def best_match(spec_version: str, versions: "list[str]") -> str | None:
    """The highest version in ``versions`` satisfying an exact version or a range, or None."""
    if is_exact(spec_version):
        return spec_version if spec_version in versions else None
    best = Range.parse(spec_version).best(versions)
    return str(best) if best else None
