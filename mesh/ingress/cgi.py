"""The HTTP handler ABI (docs/ABI.md "HTTP handlers"): a request in, a CGI-style answer out.

A route with ``format = "http"`` hands its module the whole request:

* a WASI command runs as a CGI/1.1 script: :func:`cgi_env` (``REQUEST_METHOD``, ``PATH_INFO``,
  ``QUERY_STRING``, ``SERVER_NAME``, ``CONTENT_TYPE``, ``CONTENT_LENGTH``, ``HTTP_<NAME>``) and the
  body on stdin;
* a direct-ABI handler gets the request as HTTP/1.1 text (:meth:`HttpCall.to_text`).

Either answers CGI-style (:func:`parse_output`): optional header lines (``Status: 201``,
``Content-Type: ...``, others), a blank line, the body. Output that does not start with a valid
header block is all body (status 200). Hop-by-hop and framing headers a handler names are dropped
(the server frames the answer); a ``Status`` that is not a 3-digit code in 100..599 fails the call.

The text form is also what a forwarded HTTP call carries over the mesh (``InvokeRequest.kind`` 1):
:meth:`HttpCall.from_text` parses it back on the serving node, strictly and with bounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crdt.routes import normalise_host

MAX_HEAD_BYTES = 16 << 10  # request head in the text form; the handler's header block
MAX_HEADERS = 100
# RFC 9110 token (header names, methods) and field values: visible ASCII, space, tab, obs-text.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
# Framing and connection-level headers the server owns (RFC 9110 7.6.1), never taken from a handler.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "content-length", "proxy-authenticate", "proxy-authorization",
})


class CgiError(ValueError):
    """A handler's answer (or a peer's request text) that cannot be used; the message says why."""


@dataclass(slots=True, frozen=True)
class HttpCall:
    """One HTTP request as a handler sees it. Header names are lowercase; values are bytes."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, bytes], ...] = ()
    body: bytes = b""
    host: str = ""

    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def to_text(self) -> bytes:
        """``METHOD /path?query HTTP/1.1\\r\\nname: value\\r\\n...\\r\\n\\r\\nbody`` (the direct-ABI input)."""
        head = [f"{self.method} {self.target()} HTTP/1.1".encode("ascii")]
        if self.host and not any(n == "host" for n, _ in self.headers):
            head.append(b"host: " + self.host.encode("ascii", "replace"))
        head += [n.encode("ascii") + b": " + v for n, v in self.headers]
        return b"\r\n".join(head) + b"\r\n\r\n" + self.body

    @classmethod
    def from_text(cls, data: bytes) -> "HttpCall":
        """Parse :meth:`to_text` output (from a peer: strict, bounded); CgiError otherwise."""
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep or len(head) > MAX_HEAD_BYTES:
            raise CgiError("request text has no head ending in a blank line within 16 KiB")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not _TOKEN.fullmatch(parts[0]) \
                or not _TARGET.fullmatch(parts[1]):
            raise CgiError("request line is not 'METHOD /target HTTP/1.1'")
        if len(lines) - 1 > MAX_HEADERS:
            raise CgiError(f"more than {MAX_HEADERS} request headers")
        headers = []
        host = ""
        for line in lines[1:]:
            m = _HEADER_LINE.fullmatch(line)
            if m is None:
                raise CgiError("invalid request header line")
            name = m.group(1).decode("ascii").lower()
            headers.append((name, m.group(2)))
            if name == "host" and not host:
                host = m.group(2).decode("ascii", "replace")
        path, _, query = parts[1].decode("ascii").partition("?")
        return cls(parts[0].decode("ascii"), path, query, tuple(headers), body, host)

    def header(self, name: str) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


def cgi_env(call: HttpCall, server_name: str = "", server_port: str = "") -> dict[str, str]:
    """The CGI/1.1 meta-variables (RFC 3875) of a request, for a WASI command's environment.

    A client ``Proxy`` header is not passed (``HTTP_PROXY`` would steer a guest's HTTP client:
    "httpoxy"); repeated headers are joined with ", "; non-ASCII bytes are replaced.
    """
    env = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "wasmatrix",
        "REQUEST_METHOD": call.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": call.path,
        "QUERY_STRING": call.query,
        "SERVER_NAME": server_name or normalise_host(call.host),
        "CONTENT_LENGTH": str(len(call.body)) if call.body or call.header("content-length") else "",
        "CONTENT_TYPE": "",
    }
    if server_port:
        env["SERVER_PORT"] = server_port
    for name, value in call.headers:
        text = value.decode("ascii", "replace")
        if name == "content-type":
            env["CONTENT_TYPE"] = text
            continue
        if name in ("content-length", "proxy") or name in HOP_BY_HOP:
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        env[key] = f"{env[key]}, {text}" if key in env else text
    return {k: v for k, v in env.items() if "\x00" not in v}


@dataclass(slots=True, frozen=True)
class HttpAnswer:
    """What goes back to the client: status, headers (lowercase names, bytes values), body."""

    status: int
    headers: tuple[tuple[str, bytes], ...]
    body: bytes
    dropped: tuple[str, ...] = ()  # hop-by-hop header names the handler gave (not sent)


def parse_output(out: bytes) -> HttpAnswer:
    """A handler's CGI-style output -> the answer; CgiError for a header block that cannot be sent.

    The header block is the lines before the first empty line (``\\r\\n`` or ``\\n`` endings), if
    each of them is ``Name: value`` and the block fits 16 KiB and 100 lines; otherwise the whole
    output is the body, status 200.
    """
    block, body = _split_head(out)
    if block is None:
        return HttpAnswer(200, (), out)
    status = 200
    headers: list[tuple[str, bytes]] = []
    dropped: list[str] = []
    for name, value in block:
        if name == "status":
            m = re.fullmatch(rb"([1-5][0-9][0-9])(?: [\t\x20-\x7e]*)?", value)
            if m is None:
                raise CgiError(f"handler answered an invalid Status {value[:40]!r}")
            status = int(m.group(1))
            continue
        if name in HOP_BY_HOP:
            dropped.append(name)
            continue
        headers.append((name, value))
    if status == 200 and any(n == "location" for n, _ in headers) and not any(n == "status" for n, _ in block):
        status = 302  # RFC 3875 6.2.3: a client redirect
    if status < 200:
        raise CgiError(f"handler answered an interim Status {status}")
    return HttpAnswer(status, tuple(headers), body, tuple(dropped))


def _split_head(out: bytes) -> tuple[list[tuple[str, bytes]] | None, bytes]:
    # An empty first line (output starting with a blank line) is an empty header block.
    if out.startswith(b"\r\n"):
        return [], out[2:]
    if out.startswith(b"\n"):
        return [], out[1:]
    window = out[: MAX_HEAD_BYTES + 4]
    ends = [(i, n) for i, n in ((window.find(b"\r\n\r\n"), 4), (window.find(b"\n\n"), 2)) if i >= 0]
    if not ends:
        return None, out
    end, n = min(ends)
    head = out[:end]
    lines = head.split(b"\n")
    if len(lines) > MAX_HEADERS:
        return None, out
    block = []
    for line in lines:
        m = _HEADER_LINE.fullmatch(line[:-1] if line.endswith(b"\r") else line)
        if m is None:
            return None, out
        block.append((m.group(1).decode("ascii").lower(), m.group(2)))
    return block, out[end + n:]
