"""Route matching: explicit priority first, then the most specific route wins; no match is None.

Order (greatest first), applied lexicographically:

1. ``priority`` (explicit, default 0; higher wins);
2. host: exact host > ``*.suffix`` (longer suffix first) > ``*``;
3. path: exact path > ``/prefix/*`` (longer prefix first);
4. method: a named method > ``*``;
5. route key, as a deterministic last resort (two distinct routes never tie before it).
"""

from __future__ import annotations

from typing import Iterable

from crdt.schema import RouteSpec


def _host_rank(pattern: str) -> tuple[int, int]:
    if pattern == "*":
        return (0, 0)
    if pattern.startswith("*."):
        return (1, len(pattern))
    return (2, len(pattern))


def _path_rank(pattern: str) -> tuple[int, int]:
    if pattern.endswith("/*"):
        return (0, len(pattern))
    return (1, len(pattern))


def specificity(r: RouteSpec) -> tuple[int, tuple[int, int], tuple[int, int], int]:
    """The sort key of a route: greater is preferred."""
    return (r.priority, _host_rank(r.host), _path_rank(r.path), 0 if r.method == "*" else 1)


def host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def path_matches(pattern: str, path: str) -> bool:
    if pattern.endswith("/*"):
        prefix = pattern[:-2]
        return path == prefix or path.startswith(prefix + "/") or (prefix == "" and path.startswith("/"))
    return path == pattern


def normalise_host(host: str) -> str:
    """Lowercase, strip a port and a trailing dot."""
    h = host.strip().lower()
    if h.startswith("["):  # IPv6 literal
        return h.split("]")[0] + "]"
    return h.rsplit(":", 1)[0].rstrip(".") if ":" in h else h.rstrip(".")


class RouteTable:
    """An immutable, pre-sorted route table."""

    def __init__(self, routes: Iterable[RouteSpec]) -> None:
        self._routes = sorted(routes, key=lambda r: (specificity(r), r.key), reverse=True)

    def __len__(self) -> int:
        return len(self._routes)

    def routes(self) -> list[RouteSpec]:
        return list(self._routes)

    def match(self, host: str, path: str, method: str) -> RouteSpec | None:
        """The winning route for a request, or None (→ 404)."""
        h = normalise_host(host)
        p = path.split("?", 1)[0] or "/"
        m = method.upper()
        for r in self._routes:
            if (r.method == "*" or r.method == m) and host_matches(r.host, h) and path_matches(r.path, p):
                return r
        return None

    def allowed(self, host: str, path: str) -> list[str]:
        """The methods some route takes for this host and path, sorted (the ``Allow`` of a 405; [] → 404)."""
        h = normalise_host(host)
        p = path.split("?", 1)[0] or "/"
        return sorted({r.method for r in self._routes if host_matches(r.host, h) and path_matches(r.path, p)})
