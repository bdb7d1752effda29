"""Outcomes of a command that are not crashes, each with its own exit code in the CLI."""

from __future__ import annotations


class NothingToDo(Exception):
    """The command would do nothing (every stage finished, a run already at total_steps); the message says
    so and how to get work done. The CLI exits with EXIT_NOTHING_TO_DO, never 0."""


class NonFiniteUpdates(RuntimeError):
    """Every optimizer step of actor.max_skipped_steps updates in a row had a non-finite gradient norm."""


class Stopped(Exception):
    """The run was asked to stop (SIGTERM: a preempted pod, a cancelled job; or a first Ctrl-C) and stopped
    after a step with a checkpoint; the message names the step and the checkpoint, `signal` the signal
    ("SIGTERM" or "SIGINT"). The CLI exits with EXIT_STOPPED, or EXIT_INTERRUPTED after a Ctrl-C."""

    def __init__(self, message: str, signal: str = "SIGTERM"):
        super().__init__(message)
        self.signal = signal


class Interrupted(KeyboardInterrupt):
    """A second Ctrl-C stopped the run at once, mid-step; the message names the step and the newest
    checkpoint. A KeyboardInterrupt still, so that nothing on the way catches it as an error. The CLI exits
    with EXIT_INTERRUPTED."""


class WorkerFailure(RuntimeError):
    """A worker died, raised, or hung past its deadline, and trainer.max_restarts restarts were used up (or
    none were allowed); the message names the role, the rank and the cause. The CLI exits with 1."""


class UnsharedStorage(ValueError):
    """trainer.output_dir is not on storage every node of the actor can read (a local path on a cluster of
    several nodes): checkpoints would be split over the nodes' disks. Found before any worker starts; the
    CLI exits with 2."""


class InputMismatch(ValueError):
    """A model, checkpoint or data file does not fit the run (another model's checkpoint, a truncated
    weights file); the message names the file and the mismatch and says how to fix it. Raised in a
    worker, it ends the run at once: a restart would load the same file again. The CLI exits with 2."""
