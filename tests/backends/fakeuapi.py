"""A fake wireguard-go UAPI socket for unit tests (no root, no daemon)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable


class FakeUapi:
    """Listens on a Unix socket; ``respond(request) -> reply`` scripts each answer."""

    def __init__(self, path: str, respond: Callable[[str], str]) -> None:
        self.path = path
        self.respond = respond
        self.requests: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(8)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    continue  # a liveness probe
                text = data.decode()
                self.requests.append(text)
                conn.sendall(self.respond(text).encode())

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
