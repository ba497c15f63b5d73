"""mesh/ingress/cgi.py: the HTTP handler ABI's text form, CGI environment and the parsing of a
handler's CGI-style answer, including hostile output (expected values written out by hand)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.budget import examples

from mesh.ingress.cgi import CgiError, HttpCall, cgi_env, parse_output

CALL = HttpCall("POST", "/api/items", "a=1&b=2", (("host", b"example.com:8080"), ("content-type", b"application/json"),
                                                  ("x-trace", b"one"), ("x-trace", b"two"), ("proxy", b"evil:1")),
                b'{"k": 1}', "example.com:8080")


def test_text_form_is_the_http11_request_and_parses_back() -> None:
    text = CALL.to_text()
    assert text == (b"POST /api/items?a=1&b=2 HTTP/1.1\r\nhost: example.com:8080\r\ncontent-type: application/json\r\n"
                    b"x-trace: one\r\nx-trace: two\r\nproxy: evil:1\r\n\r\n{\"k\": 1}")
    assert HttpCall.from_text(text) == CALL


@pytest.mark.parametrize("text", [
    b"GET / HTTP/1.1\r\n",  # no blank line
    b"GET / HTTP/1.0\r\n\r\n",  # not 1.1
    b"GET  / HTTP/1.1\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\n\r\n",
    b"GET nopath HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
    b"GET / HTTP/1.1\r\nx: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"x: 1\r\n" * 101 + b"\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
])
def test_hostile_request_text_from_a_peer_is_refused(text: bytes) -> None:
    with pytest.raises(CgiError):
        HttpCall.from_text(text)


def test_cgi_environment() -> None:
    env = cgi_env(CALL)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/api/items"
    assert env["QUERY_STRING"] == "a=1&b=2"
    assert env["SERVER_NAME"] == "example.com"
    assert env["CONTENT_TYPE"] == "application/json"
    assert env["CONTENT_LENGTH"] == "8"
    assert env["HTTP_X_TRACE"] == "one, two"
    assert env["HTTP_HOST"] == "example.com:8080"
    assert "HTTP_PROXY" not in env and "HTTP_CONTENT_TYPE" not in env


def test_header_block_status_and_body() -> None:
    a = parse_output(b"Status: 201 Created\r\nContent-Type: text/html\r\nX-A: 1\r\n\r\n<p>hi</p>\r\n\r\nmore")
    assert (a.status, a.headers, a.body) == (201, (("content-type", b"text/html"), ("x-a", b"1")), b"<p>hi</p>\r\n\r\nmore")
    b = parse_output(b"Content-Type: text/plain\n\nbare newlines")
    assert (b.status, b.headers, b.body) == (200, (("content-type", b"text/plain"),), b"bare newlines")
    assert parse_output(b"Location: /elsewhere\r\n\r\n").status == 302
    assert parse_output(b"\r\nall body: no headers").body == b"all body: no headers"


@pytest.mark.parametrize("out", [
    b"hello from wasm\nenv: X=1\n\nrest",  # first line is no header: all body
    b"just text, no blank line",
    b"Status: 201\r\n",  # a header but no blank line: all body
    b"X-Ok: 1\r\nnot a header\r\n\r\nbody",
    b"X-Bad\x00: 1\r\n\r\nbody",
    b"X-Ctl: a\x07b\r\n\r\nbody",
    b"X-Split: a\rb: c\r\n\r\nbody",
    b"X: " + b"a" * (17 << 10) + b"\r\n\r\nbody",  # header block over 16 KiB
    b"X: 1\n" * 101 + b"\nbody",  # too many header lines
    b"",
])
def test_output_without_a_valid_header_block_is_all_body_200(out: bytes) -> None:
    a = parse_output(out)
    assert (a.status, a.headers, a.body) == (200, (), out)


def test_hop_by_hop_and_framing_headers_are_dropped() -> None:
    a = parse_output(b"Transfer-Encoding: chunked\r\nContent-Length: 999\r\nConnection: close\r\nX-Keep: y\r\n\r\nok")
    assert (a.status, a.headers, a.body) == (200, (("x-keep", b"y"),), b"ok")
    assert a.dropped == ("transfer-encoding", "content-length", "connection")


@pytest.mark.parametrize("status", [b"abc", b"99", b"600", b"2000", b"20", b"200x", b"100", b"103 Early"])
def test_invalid_or_interim_status_fails_the_call(status: bytes) -> None:
    with pytest.raises(CgiError):
        parse_output(b"Status: " + status + b"\r\n\r\nbody")


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=2000))
def test_any_output_parses_or_fails_cleanly(out: bytes) -> None:
    try:
        a = parse_output(out)
    except CgiError:
        return
    assert 200 <= a.status <= 599
    assert out.endswith(a.body)
    for name, value in a.headers:
        assert name == name.lower() and b"\r" not in value and b"\n" not in value and b"\x00" not in value


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.tuples(st.from_regex(rb"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True), st.binary(max_size=30)),
                max_size=5), st.binary(max_size=50))
def test_any_parsed_header_block_is_sendable_by_h11(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    import h11

    out = b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body
    try:
        a = parse_output(out)
    except CgiError:
        return
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    hs = [(n.encode(), v) for n, v in a.headers] + [(b"content-length", str(len(a.body)).encode())]
    conn.send(h11.Response(status_code=a.status, headers=hs))  # raises LocalProtocolError if not
    conn.send(h11.Data(data=a.body))
    conn.send(h11.EndOfMessage())
