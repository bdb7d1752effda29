"""The root cause of a dead vLLM engine core, in the error r1ray raises.

When vLLM's engine core runs in a process of its own (GPU engines, CPU engines with TP > 1) and fails, the
client only gets `EngineDeadError("EngineCore encountered an issue. See stack trace (above) for the root
cause.")`; the cause is a traceback the engine core logged to its own stderr, buried in a worker log.
`EngineErrorLog` gives every vLLM process of an engine (this one, the engine core, its workers) a second
log handler that writes ERROR records to one file: through `VLLM_LOGGING_CONFIG_PATH` (vLLM's own logging
config, read by each process that imports vLLM after it is set) and, for this process, a handler added
directly. `surfaced` turns an `EngineDeadError` into one line quoting the last exception in that file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from copy import deepcopy
from pathlib import Path

# vLLM's formatter starts every line of a record, traceback lines too, with "(process pid=N) LEVEL date
# time [file:line] ".
_PREFIX = re.compile(r"^\(.*? pid=\d+\) [A-Z]+ .*?\] ")
# The last line of a Python traceback: the exception's (dotted) type, then its message.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Fault))(?::\s.*)?$")
TAIL_BYTES = 64 * 1024              # a root cause is near the end; logs of a long run can be large


class EngineErrorLog:
    """One file of ERROR records for an engine's vLLM processes; `install` before the engine starts."""

    def __init__(self, directory: str | None = None):
        folder = Path(directory or tempfile.gettempdir())
        self.path = folder / f"r1ray-vllm-errors-{os.getpid()}.log"
        self.config_path = folder / f"r1ray-vllm-logging-{os.getpid()}.json"

    def install(self) -> None:
        from vllm import envs
        from vllm.logger import DEFAULT_LOGGING_CONFIG

        self.path.write_text("")
        config = deepcopy(DEFAULT_LOGGING_CONFIG)
        # What vLLM would refresh from its environment when it applies its default config.
        config["handlers"]["vllm"].update(level=envs.VLLM_LOGGING_LEVEL, stream=envs.VLLM_LOGGING_STREAM)
        for formatter in config["formatters"].values():
            formatter["log_level"] = envs.VLLM_LOGGING_LEVEL
        config["handlers"]["r1ray_errors"] = {"class": "logging.FileHandler", "filename": str(self.path),
                                              "level": "ERROR", "formatter": "vllm"}
        config["loggers"]["vllm"]["handlers"] = ["vllm", "r1ray_errors"]
        self.config_path.write_text(json.dumps(config))
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(self.config_path)       # the engine's child processes
        here = logging.FileHandler(self.path)                                  # this process: vLLM is imported
        here.setLevel(logging.ERROR)
        logging.getLogger("vllm").addHandler(here)

    def close(self) -> None:
        """Remove the config file, and the error log when nothing was logged to it."""
        self.config_path.unlink(missing_ok=True)
        try:
            if self.path.stat().st_size == 0:
                self.path.unlink()
        except OSError:
            pass

    def root_cause(self) -> str | None:
        """The last exception line any of the engine's processes logged, or None."""
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.path) - TAIL_BYTES))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return None
        messages = [_PREFIX.sub("", line).strip() for line in lines]
        causes = [m for m in messages if _EXCEPTION_LINE.match(m) and not m.split(":")[0].endswith("EngineDeadError")]
        return causes[-1] if causes else None


def surfaced(exc: BaseException, log: EngineErrorLog | None) -> BaseException:
    """`exc`, or for a dead engine core a RuntimeError naming the root cause its processes logged."""
    if type(exc).__name__ != "EngineDeadError":
        return exc
    cause = log.root_cause() if log is not None else None
    where = f" (its log: {log.path})" if log is not None else ""
    return RuntimeError(f"vLLM's engine core died: {cause or 'it logged no exception; see the rollout worker log'}"
                        f"{where}")
