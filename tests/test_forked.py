"""forked.Forked: a function in a forked process, its answer (returned or raised) back in this one."""
from __future__ import annotations

import os
import signal
import time

import pytest

from batchseg.forked import Forked
from batchseg.errors import StudyError


def _double(values: list[int]) -> list[int]:
    return [2 * v for v in values]


def _fails() -> None:
    raise StudyError("input.bad_dicom", "study 7: no pixel data")


class _Awkward(Exception):
    def __init__(self, a: int, b: int) -> None:   # pickled with args (a + b,): cannot be made again
        super().__init__(a + b)


def _fails_awkwardly() -> None:
    raise _Awkward(1, 2)


def _sleeps() -> None:
    time.sleep(60)


def test_the_answer_comes_back() -> None:
    assert Forked(_double, [1, 2, 3]).result() == [2, 4, 6]


def test_an_error_comes_back_as_itself() -> None:
    with pytest.raises(StudyError) as caught:
        Forked(_fails).result()
    assert (caught.value.error_class, caught.value.message) == ("input.bad_dicom", "study 7: no pixel data")


def test_an_error_that_cannot_travel_comes_back_in_words() -> None:
    with pytest.raises(RuntimeError, match="_fails_awkwardly in a forked process: _Awkward: 3"):
        Forked(_fails_awkwardly).result()


def test_a_killed_child_is_an_error_and_stop_ends_a_running_one() -> None:
    child = Forked(_sleeps)
    os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=f"ended without an answer \\(exit code -{signal.SIGKILL}\\)"):
        child.result()
    started = time.monotonic()
    running = Forked(_sleeps)
    running.stop()
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(running.pid, 0)
