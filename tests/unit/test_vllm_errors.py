"""A dead vLLM engine core's root cause reaches r1ray's error (workers/engines/vllm_errors.py): a separate
process that imports vLLM (as its engine core does) writes its ERROR records where the rollout engine reads
them, through vLLM's own logging config, and an EngineDeadError becomes one line quoting the cause."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow            # two vLLM imports, about 15 s

from r1ray.workers.engines.vllm_errors import EngineErrorLog, surfaced  # noqa: E402

# What vLLM's engine core does when its busy loop raises (vllm/v1/engine/core.py: run_engine_core).
ENGINE_CORE = """
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging, init_logger
# The engine core applies the logging config its parent's VllmConfig carries, made from the environment.
configure_logging(LoggingConfig())
logger = init_logger("vllm.v1.engine.core")
try:
    raise RuntimeError("Unsupported CPU attention configuration: head_dim=16 isa=2 kv_cache_idx=0")
except Exception:
    logger.exception("EngineCore encountered a fatal error.")
"""


def test_a_dead_engine_cores_logged_cause_is_quoted_in_one_line(tmp_path, monkeypatch) -> None:
    from vllm.v1.engine.exceptions import EngineDeadError

    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    log = EngineErrorLog(str(tmp_path))
    log.install()
    try:
        env = dict(os.environ)                     # what the engine core process inherits
        subprocess.run([sys.executable, "-c", ENGINE_CORE], env=env, check=True, timeout=120,
                       capture_output=True)
    finally:
        import logging

        logging.getLogger("vllm").handlers = [h for h in logging.getLogger("vllm").handlers
                                              if getattr(h, "baseFilename", None) != str(log.path)]
        os.environ.pop("VLLM_LOGGING_CONFIG_PATH", None)
    error = surfaced(EngineDeadError(), log)
    assert isinstance(error, RuntimeError)
    assert str(error).startswith("vLLM's engine core died: RuntimeError: Unsupported CPU attention "
                                 "configuration: head_dim=16")
    assert "\n" not in str(error) and str(log.path) in str(error)
    other = ValueError("not an engine death")
    assert surfaced(other, log) is other


def test_an_engine_core_that_logged_nothing_says_so(tmp_path) -> None:
    from vllm.v1.engine.exceptions import EngineDeadError

    log = EngineErrorLog(str(tmp_path))
    log.path.write_text("INFO something\n")
    assert "it logged no exception" in str(surfaced(EngineDeadError(), log))


def test_closing_keeps_only_a_log_that_holds_something(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    quiet, loud = EngineErrorLog(str(tmp_path / "a")), EngineErrorLog(str(tmp_path / "b"))
    for log in (quiet, loud):
        log.path.parent.mkdir()
        log.path.write_text("")
        log.config_path.write_text("{}")
    loud.path.write_text("RuntimeError: boom\n")
    quiet.close()
    loud.close()
    assert not quiet.path.exists() and not quiet.config_path.exists()
    assert loud.path.exists() and not loud.config_path.exists()
