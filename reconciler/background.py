"""``Background(fn, *args)``: one call run in a thread of its own, its value or
exception handed back to the caller's thread by ``result()``.

For reads that mostly wait on another process (wireguard-go, ``ip``, ``nft``)
and can overlap other work; there is nothing to undo, so a caller that no
longer needs the value only ``join()``s. Standard library only, in the bottom
layer: used by ``reconciler.agent.gather`` (the host reads of a pass) and
``reconciler.backends.userspace`` (``ip`` while wireguard-go answers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Background:
    """``fn(*args)`` started at once in a thread; ``result()`` waits for it and
    returns its value or raises its exception; ``join()`` only waits."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "meshops-read") -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn(*args)
            except BaseException as exc:  # noqa: BLE001 -- re-raised by result(), in the caller's thread
                self._error = exc

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
