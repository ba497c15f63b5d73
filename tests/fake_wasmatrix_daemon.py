"""A stand-in for ``wasmatrix node run`` that speaks issue 10's command-line contract, for harness tests.

It is NOT the daemon: plain UDP heartbeats (no SWIM, no Noise), enough for bench/wasmatrix_harness.py to
be exercised end to end before the real daemon exists.  Every ``HEARTBEAT`` s a node sends its name,
advertised address and the addresses it knows to every address it knows (the seed first); a member not
heard from for ``DEAD_AFTER`` s is ``dead``.  It writes ``DATA_DIR/api.json`` (mesh/datadir.py format)
when its API serves ``GET /v1/members`` (bearer token) with the contract's JSON list.  Loopback only; it
exits on its own after ``LIFETIME`` s so a lost process cannot linger.

    python tests/fake_wasmatrix_daemon.py node run --data-dir D --bind 127.0.0.1:P [--advertise A]
        [--seed A ...] [--mesh-secret F | --insecure] [--name N] [--profile P] [--api HOST:PORT]
    python tests/fake_wasmatrix_daemon.py mesh init --out FILE
    python tests/fake_wasmatrix_daemon.py members --data-dir D --json
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import secrets
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.datadir import read_api_info, write_api_info, ApiInfo  # noqa: E402

HEARTBEAT = 0.05
DEAD_AFTER = 0.6
LIFETIME = 300.0


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"fake daemon: loopback only, not {text}")
    return "127.0.0.1", int(port)


def node_run(a: argparse.Namespace) -> int:
    if not a.mesh_secret and not a.insecure:
        print("refusing to start without --mesh-secret (or --insecure)", file=sys.stderr)
        return 2
    data = Path(a.data_dir)
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    bind = _addr(a.bind)
    me = f"{bind[0]}:{bind[1]}" if not a.advertise else a.advertise
    name = a.name or me
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(bind)
    lock = threading.Lock()
    last: dict[str, float] = {name: float("inf")}
    addrs: dict[str, str] = {name: me}
    known: set[str] = set(a.seed or [])

    def receive() -> None:
        while True:
            data_, _ = sock.recvfrom(65535)
            msg = json.loads(data_)
            with lock:
                last[msg["name"]] = time.monotonic()
                addrs[msg["name"]] = msg["addr"]
                known.update(x for x in [msg["addr"], *msg["known"]] if x != me)

    def beat() -> None:
        while True:
            with lock:
                targets = sorted(known)
                payload = json.dumps({"name": name, "addr": me, "known": targets}).encode()
            for t in targets:
                sock.sendto(payload, _addr(t))
            time.sleep(HEARTBEAT)

    def members() -> list[dict[str, object]]:
        now = time.monotonic()
        with lock:
            return [{"name": n, "id": n, "addr": addrs[n], "status": "alive" if now - t < DEAD_AFTER else "dead",
                     "incarnation": 0, "zone": "", "labels": {}, "rtt_ms": None} for n, t in sorted(last.items())]

    token = secrets.token_hex(16)

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("Authorization") != f"Bearer {token}":
                self.send_error(401)
            elif self.path != "/v1/members":
                self.send_error(404)
            else:
                body = json.dumps(members()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    api_host, api_port = _addr(a.api) if a.api else ("127.0.0.1", 0)
    server = http.server.ThreadingHTTPServer((api_host, api_port), Api)
    for fn in (receive, beat, server.serve_forever):
        threading.Thread(target=fn, daemon=True).start()
    write_api_info(data / "api.json", ApiInfo(f"127.0.0.1:{server.server_address[1]}", token))
    print(f"fake node {name} up on {me}", flush=True)
    time.sleep(LIFETIME)
    return 0


def members_cmd(a: argparse.Namespace) -> int:
    info = read_api_info(Path(a.data_dir) / "api.json")
    req = urllib.request.Request(f"http://{info.addr}/v1/members", headers={"Authorization": f"Bearer {info.token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        sys.stdout.write(resp.read().decode() + "\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="fake-wasmatrix")
    sub = p.add_subparsers(dest="cmd", required=True)
    node = sub.add_parser("node").add_subparsers(dest="sub", required=True).add_parser("run")
    node.add_argument("--data-dir", required=True)
    node.add_argument("--bind", required=True)
    node.add_argument("--advertise")
    node.add_argument("--seed", action="append")
    node.add_argument("--mesh-secret")
    node.add_argument("--insecure", action="store_true")
    node.add_argument("--name")
    node.add_argument("--profile", choices=["lan", "wan", "local", "vehicle"])
    node.add_argument("--api")
    node.set_defaults(fn=node_run)
    init = sub.add_parser("mesh").add_subparsers(dest="sub", required=True).add_parser("init")
    init.add_argument("--out", required=True)
    init.set_defaults(fn=lambda a: Path(a.out).write_text("fake mesh file\n") and 0)
    mem = sub.add_parser("members")
    mem.add_argument("--data-dir", required=True)
    mem.add_argument("--json", action="store_true")
    mem.set_defaults(fn=members_cmd)
    args = p.parse_args()
    return int(args.fn(args))


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
