"""``reconciler.background.Background``: the value, or the exception raised in
the caller's thread; ``join`` waits without raising; work runs side by side."""

from __future__ import annotations

import threading

import pytest

from reconciler.background import Background


def test_value_and_arguments() -> None:
    assert Background(lambda a, b: a + b, 2, 3).result() == 5


@pytest.mark.parametrize("error", [ValueError("bad"), OSError(5, "io"), KeyboardInterrupt()])
def test_an_exception_is_raised_in_the_callers_thread(error: BaseException) -> None:
    def fail() -> None:
        raise error

    job = Background(fail)
    job.join()  # waiting alone does not raise
    with pytest.raises(type(error)) as got:
        job.result()
    assert got.value is error


def test_runs_in_its_own_named_thread_beside_the_caller() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def work() -> int:
        seen.append(threading.current_thread().name)
        started.set()
        assert release.wait(5)
        return 7

    job = Background(work, name="meshops-test")
    assert started.wait(5)  # running while the caller goes on
    release.set()
    assert job.result() == 7 and seen == ["meshops-test"]
