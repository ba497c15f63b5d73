import pytest
from hypothesis import given, strategies as st

from crdt.errors import ValidationError
from crdt.routes import RouteTable
from crdt.schema import RouteSpec
from model.errors import SemverError
from model.semver import Range, Version


def test_version_parse_and_order():
    vs = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "2.0.0"]
    parsed = [Version.parse(v) for v in vs]
    assert parsed == sorted(parsed)
    assert str(Version.parse("1.2.3-rc.1+build.5")) == "1.2.3-rc.1+build.5"
    assert Version.parse("1.0.0+a") == Version.parse("1.0.0+b")


@pytest.mark.parametrize("bad", ["1", "1.2", "01.2.3", "1.2.3-", "1.2.3-01", "v1.2.3", "1.2.3 ", "", "1.2.x"])
def test_version_rejects(bad):
    with pytest.raises(SemverError):
        Version.parse(bad)


@pytest.mark.parametrize(
    "rng,yes,no",
    [
        ("^1.2.3", ["1.2.3", "1.9.0"], ["2.0.0", "1.2.2", "1.3.0-beta"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0"]),
        (">=1.0.0 <2.0.0", ["1.0.0", "1.99.0"], ["2.0.0", "0.9.9"]),
        ("1.2.3", ["1.2.3"], ["1.2.4"]),
        ("*", ["0.0.1", "9.9.9"], ["1.0.0-rc.1"]),
        (">=1.0.0-rc.1", ["1.0.0-rc.2", "1.0.0", "3.0.0"], ["1.1.0-rc.1"]),
    ],
)
def test_ranges(rng, yes, no):
    r = Range.parse(rng)
    assert all(r.matches(v) for v in yes)
    assert not any(r.matches(v) for v in no)


def test_range_best_and_errors():
    assert str(Range.parse("^1.0.0").best(["1.0.0", "1.4.0", "2.0.0"])) == "1.4.0"
    assert Range.parse("^3.0.0").best(["1.0.0"]) is None
    for bad in ["^1.2", ">>1.0.0", "", "latest"]:
        with pytest.raises(SemverError):
            Range.parse(bad)


@given(st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)), st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)))
def test_caret_matches_definition(base, v):
    b, x = Version(*base), Version(*v)
    upper = Version(b.major + 1, 0, 0) if b.major else Version(0, b.minor + 1, 0) if b.minor else Version(0, 0, b.patch + 1)
    assert Range.parse(f"^{b}").matches(x) == (b <= x < upper)


def R(host, path, method="*", dep="d", prio=0):
    return RouteSpec(host, path, method, dep, prio)


def test_route_priority_rules():
    t = RouteTable([
        R("*", "/*", dep="catchall"),
        R("*.example.com", "/*", dep="wild"),
        R("api.example.com", "/*", dep="api"),
        R("api.example.com", "/v1/*", dep="v1"),
        R("api.example.com", "/v1/users", dep="users"),
        R("api.example.com", "/v1/users", "POST", dep="users-post"),
        R("other.org", "/x", dep="explicit", prio=0),
    ])
    m = lambda h, p, meth="GET": (t.match(h, p, meth) or R("*", "/none", dep="none")).deployment  # noqa: E731
    assert m("api.example.com", "/v1/users") == "users"
    assert m("api.example.com", "/v1/users", "POST") == "users-post"
    assert m("API.example.com:8080", "/v1/users?x=1", "post") == "users-post"
    assert m("api.example.com", "/v1/other") == "v1"
    assert m("api.example.com", "/v1") == "v1"
    assert m("api.example.com", "/v10") == "api"
    assert m("www.example.com", "/anything") == "wild"
    assert m("example.com", "/") == "catchall"  # *.example.com needs a subdomain
    assert m("other.org", "/x") == "explicit"


def test_route_no_match_and_explicit_priority():
    t = RouteTable([R("a.com", "/x", "GET", dep="a")])
    assert t.match("a.com", "/x", "POST") is None
    assert t.match("b.com", "/x", "GET") is None
    t2 = RouteTable([R("a.com", "/x", dep="specific"), R("*", "/*", dep="override", prio=10)])
    assert t2.match("a.com", "/x", "GET").deployment == "override"


@pytest.mark.parametrize("host,path,method", [("A.com", "/", "GET"), ("a.com", "x", "GET"), ("a.com", "/a*b", "GET"), ("a.com", "/a*", "GET"), ("a.com", "/", "BREW")])
def test_route_validation(host, path, method):
    with pytest.raises(ValidationError):
        RouteSpec(host, path, method, "dep")
