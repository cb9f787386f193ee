"""The lab's traffic probe, run inside a node's namespace: ``python -m reconciler.lab.probe``.

``serve --tcp 22,8080 --udp 53`` listens on every address of the namespace
and answers each TCP connection and each UDP datagram with ``pong:`` plus
what it received; it prints ``ready`` once every port is bound and runs until
SIGTERM; ``--whoami PORT`` adds a TCP port that answers each connection with
the source address it came from (``whoami HOST PORT`` prints that answer).
``send FLOWS_JSON`` tries each flow (``{"id", "dst", "proto",
"port"}``) at once, in threads, and prints one JSON list of ``{"id", "ok",
"detail"}``: ``ok`` only when the answer came back, so an accepted flow has
carried data both ways. Stdlib only; started by ``reconciler.lab.flows``
through ``ip netns exec``. It talks only to the addresses it is given, which
the lab takes from its own namespaces.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PONG = b"pong:"


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def serve(tcp: list[int], udp: list[int], whoami: int | None = None) -> None:
    sel = selectors.DefaultSelector()
    if whoami is not None:
        w = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        w.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        w.bind(("0.0.0.0", whoami))
        w.listen(16)
        w.setblocking(False)
        sel.register(w, selectors.EVENT_READ, "whoami")
    for port in tcp:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "tcp")
    for port in udp:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, "udp")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "udp":
                try:
                    data, peer = sock.recvfrom(2048)
                    sock.sendto(PONG + data, peer)
                except OSError:
                    pass
                continue
            try:
                conn, peer = sock.accept()
            except OSError:
                continue
            if key.data == "whoami":
                with conn:
                    try:
                        conn.sendall(str(peer[0]).encode())
                    except OSError:
                        pass
                continue
            threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def _answer(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(2.0)
        try:
            data = conn.recv(2048)
            if data:
                conn.sendall(PONG + data)
        except OSError:
            pass


def send_one(flow: dict[str, Any], timeout: float) -> dict[str, Any]:
    token = f"{flow['id']}".encode()
    dst = (str(flow["dst"]), int(flow["port"]))
    try:
        if flow["proto"] == "tcp":
            with socket.create_connection(dst, timeout=timeout) as s:
                s.settimeout(timeout)
                s.sendall(token)
                reply = s.recv(2048)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout / 3)
                reply = b""
                for _ in range(3):  # UDP may lose the first datagram while a path warms up
                    s.sendto(token, dst)
                    try:
                        reply = s.recv(2048)
                        break
                    except TimeoutError:
                        continue
    except OSError as exc:
        return {"id": flow["id"], "ok": False, "detail": type(exc).__name__}
    ok = reply == PONG + token
    return {"id": flow["id"], "ok": ok, "detail": "answered" if ok else "wrong answer"}


def send(flows: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=min(64, max(1, len(flows)))) as pool:
        return list(pool.map(lambda f: send_one(f, timeout), flows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reconciler.lab.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--tcp", type=_ports, default=[])
    s.add_argument("--udp", type=_ports, default=[])
    s.add_argument("--whoami", type=int)
    w = sub.add_parser("whoami")
    w.add_argument("host")
    w.add_argument("port", type=int)
    w.add_argument("--timeout", type=float, default=2.0)
    c = sub.add_parser("send")
    c.add_argument("flows")
    c.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.tcp, args.udp, args.whoami)
        return 0
    if args.cmd == "whoami":
        try:
            with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
                s.settimeout(args.timeout)
                print(s.recv(256).decode())
        except OSError as exc:
            print(f"probe: whoami {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        return 0
    print(json.dumps(send(json.loads(args.flows), args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
