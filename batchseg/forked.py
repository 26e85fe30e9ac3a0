"""A function called in a forked process, what it returned (or raised) sent back pickled; whether one would get a
CPU of its own.

`init` uses it at a million studies to put the machine's second CPU to work: a new ledger's rows written while the
next ones are made (ledger_bulk.StagedWriter). Fork, not spawn: the child starts from this process's state as it is
(the function, its arguments, what is imported); nothing is pickled on the way in.
"""
from __future__ import annotations

import multiprocessing
import pickle
from typing import Any, Callable, Generic, TypeVar

from .placement import usable_cpus

T = TypeVar("T")


class Forked(Generic[T]):
    """`function(*args)` running in a forked child process from construction on.

    result() waits for it and returns what it returned, or raises what it raised (an exception that does not
    survive pickling comes back as a RuntimeError with its words). stop() ends it at once (its work is not wanted).
    `close_in_child`: connections of this process the child closes first, so that a pipe it reads ends when this
    process closes its end or dies.
    """

    def __init__(self, function: Callable[..., T], *args: Any, close_in_child: tuple[Any, ...] = ()) -> None:
        context = multiprocessing.get_context("fork")
        self._answer, answer_out = context.Pipe(duplex=False)
        self._process = context.Process(target=_call, name=f"batchseg {function.__name__}", daemon=True,
                                        args=(function, args, answer_out, (self._answer, *close_in_child)))
        self._process.start()
        answer_out.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def result(self) -> T:
        try:
            said = self._answer.recv_bytes()
        except EOFError:   # killed, or gone before it could answer
            said = None
        finally:
            self._process.join()
            self._answer.close()
        if said is None:
            raise RuntimeError(f"{self._process.name}: the process ended without an answer (exit code "
                               f"{self._process.exitcode})")
        returned, value = pickle.loads(said)
        if returned:
            return value
        raise value

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._answer.close()


def _call(function: Callable[..., Any], args: tuple[Any, ...], answer_out: Any, close: tuple[Any, ...]) -> None:
    for end in close:
        end.close()
    try:
        answer: tuple[bool, Any] = (True, function(*args))
    except BaseException as exc:   # noqa: BLE001 - every failure goes back to the caller, who raises it
        answer = (False, exc)
    try:
        said = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
        pickle.loads(said)
    except Exception as exc:   # what does not travel: its words do
        value = answer[1]
        words = f"{type(value).__name__}: {value}" if not answer[0] else f"an answer that cannot be pickled ({exc})"
        said = pickle.dumps((False, RuntimeError(f"{function.__name__} in a forked process: {words}")))
    try:
        answer_out.send_bytes(said)
    except OSError:   # the caller is gone: nobody to tell
        pass


def second_cpu() -> bool:
    """Would a forked process run beside this one? This system forks, and this process may use two CPUs."""
    return "fork" in multiprocessing.get_all_start_methods() and usable_cpus() > 1
