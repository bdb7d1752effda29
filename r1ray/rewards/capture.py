"""What a reward function prints, captured per call, bounded, and counted.

A custom reward that prints goes unseen in one test and writes gigabytes into the driver log over a run
(112 MB in one 16-sample step was measured), and it would break `r1ray score … | jq`. The reward worker
process therefore scores each sample with its file descriptors 1 and 2 pointed into a pipe: C extensions
and child processes are caught as well as `print`. A thread drains the pipe, keeping only the last
`OUTPUT_TAIL_BYTES` and the total count, so memory stays bounded however much is written, and nothing
reaches a disk. The tail goes into the error message of a reward that raised and into `r1ray score`'s
JSON; the counts become the `reward/output_bytes` metric.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import TracebackType

logger = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 4096
# A child that inherited the pipe and outlives the call (a daemon) keeps it open; the drain thread is
# then left behind rather than waited for.
_DRAIN_JOIN_S = 2.0


class CapturedOutput:
    """`with CapturedOutput() as out: ...`; then `out.tail` (str, the last OUTPUT_TAIL_BYTES written to
    stdout or stderr, decoded leniently) and `out.total_bytes`."""

    def __init__(self, tail_bytes: int = OUTPUT_TAIL_BYTES):
        self.tail_bytes = tail_bytes
        self.total_bytes = 0
        self._tail = b""
        self._read_fd = -1
        self._saved: list[int] = []
        self._thread: threading.Thread | None = None

    @property
    def tail(self) -> str:
        return self._tail.decode("utf-8", errors="replace")

    @property
    def dropped_bytes(self) -> int:
        return max(self.total_bytes - len(self._tail), 0)

    def __enter__(self) -> "CapturedOutput":
        _flush()
        self._read_fd, write_fd = os.pipe()
        self._saved = [os.dup(1), os.dup(2)]
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._drain, name="reward-output", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._read_fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            self.total_bytes += len(chunk)
            self._tail = (self._tail + chunk)[-self.tail_bytes:]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        assert self._thread is not None
        self._thread.join(_DRAIN_JOIN_S)
        if self._thread.is_alive():
            logger.warning("reward output: a process started by the reward still holds its stdout/stderr; "
                           "what it writes from now on is discarded")
            return          # the thread owns the read end until that process exits
        os.close(self._read_fd)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
