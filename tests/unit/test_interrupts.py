"""Ctrl-C: the first one stops the run after the step with a checkpoint, as SIGTERM does, and says so; a
second one stops at once; the CLI ends either way with exit 130 and one line, never a traceback."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from r1ray.errors import Interrupted, Stopped
from r1ray.controller import cli
from r1ray.controller.cli import EXIT_INTERRUPTED, EXIT_STOPPED, main
from r1ray.controller.run_guards import StopRequest, interrupted


def send(signum: int) -> None:
    """Signal this process and let the handler run (Python runs it between bytecodes of the main thread)."""
    os.kill(os.getpid(), signum)
    time.sleep(0.05)


def test_a_first_ctrl_c_asks_for_a_stop_after_the_step_and_says_how_to_stop_now(caplog) -> None:
    before = signal.getsignal(signal.SIGINT)
    with caplog.at_level(logging.WARNING), StopRequest() as stop:
        send(signal.SIGINT)
        assert stop.requested == "SIGINT"
    assert ("SIGINT received: stopping after this step, with a checkpoint; press Ctrl-C again to stop now"
            in caplog.text)
    assert signal.getsignal(signal.SIGINT) is before                          # restored


def test_a_second_ctrl_c_stops_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), StopRequest() as stop:
        send(signal.SIGINT)
        assert stop.requested == "SIGINT"
        send(signal.SIGINT)
        pytest.fail("the second Ctrl-C did not interrupt")
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_still_asks_for_a_stop_after_the_step(caplog) -> None:
    # Restored to what it was: the default, or a handler of the process's own (Ray's, when a test before
    # this one started a cluster in this process).
    before = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING), StopRequest() as stop:
        send(signal.SIGTERM)
        assert stop.requested == "SIGTERM"
    assert "SIGTERM received: stopping after this step, with a checkpoint" in caplog.text
    assert "press Ctrl-C" not in caplog.text
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_second_ctrl_c_names_the_step_and_the_last_checkpoint() -> None:
    assert str(interrupted(3, None)) == ("stopped at once during step 3; no checkpoint was written yet; continue "
                                         "with trainer.resume=auto")
    assert str(interrupted(3, Path("D/checkpoints/step_000002"))) == (
        "stopped at once during step 3; the last checkpoint is D/checkpoints/step_000002; continue with "
        "trainer.resume=auto")


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (Stopped("SIGINT received: finished step 3 of 10 and wrote D/checkpoints/step_000003; continue with "
                 "trainer.resume=auto", signal="SIGINT"), EXIT_INTERRUPTED,
         "stopped: SIGINT received: finished step 3 of 10 and wrote D/checkpoints/step_000003; continue with "
         "trainer.resume=auto"),
        (Stopped("SIGTERM received: finished step 3 of 10 ...", signal="SIGTERM"), EXIT_STOPPED,
         "stopped: SIGTERM received: finished step 3 of 10 ..."),
        (Interrupted("stopped at once during step 4; the last checkpoint is D/checkpoints/step_000003; continue with "
                     "trainer.resume=auto"), EXIT_INTERRUPTED,
         "interrupted: stopped at once during step 4; the last checkpoint is D/checkpoints/step_000003; continue "
         "with trainer.resume=auto"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted: stopped at once"),
    ],
)
def test_the_cli_ends_a_stop_or_an_interrupt_with_its_exit_code_and_one_line(raised, code, line, monkeypatch,
                                                                             capsys) -> None:
    def command(args) -> int:
        raise raised

    monkeypatch.setattr(cli, "_config_cmd", command)
    assert main(["config", "fields"]) == code
    assert capsys.readouterr().err.splitlines() == [line]
