"""Trainer.fit's restart policy, with `_run` failing as a dead or raising worker makes it fail: how many
attempts are made, where each goes on from, and the one line that ends the run."""

from __future__ import annotations

import pytest
import ray

from r1ray.config_load import load_config
from r1ray.controller.restarts import describe_failure
from r1ray.controller.trainer import Trainer
from r1ray.errors import WorkerFailure

REPO_CONFIG = "configs/quickstart.yaml"


class FailingTrainer(Trainer):
    """The real Trainer.fit loop around attempts that fail `failures` times with `error`."""

    def __init__(self, cfg, error: BaseException, failures: int):
        super().__init__(cfg)
        self.error, self.failures, self.resumes = error, failures, []

    def _prepare(self) -> None:
        pass

    def _run(self, resume: str) -> dict[str, float]:
        self.resumes.append(resume)
        if len(self.resumes) <= self.failures:
            raise self.error
        return {"done": 1.0}


def _cfg(tmp_path, *overrides):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    return load_config(repo / REPO_CONFIG, ["stages=[]", f"trainer.output_dir={tmp_path}", *overrides])


def _task_error() -> ray.exceptions.RayTaskError:
    return ray.exceptions.RayTaskError("update", "Traceback ...", RuntimeError("gloo: connection closed\nby peer"))


def test_failures_within_the_limit_are_restarted_from_the_start_when_no_checkpoint_exists(tmp_path):
    trainer = FailingTrainer(_cfg(tmp_path, "trainer.max_restarts=2"), _task_error(), failures=2)
    assert trainer.fit() == {"done": 1.0}
    assert trainer.resumes == ["never", "never", "never"]


def test_the_last_failure_names_the_worker_and_the_restarts_used(tmp_path):
    trainer = FailingTrainer(_cfg(tmp_path, "trainer.max_restarts=2"), _task_error(), failures=3)
    with pytest.raises(WorkerFailure) as failure:
        trainer.fit()
    assert len(trainer.resumes) == 3
    assert str(failure.value) == ("a worker (update) raised RuntimeError: gloo: connection closed by peer; "
                                  "gave up after 2 restart(s)")


def test_user_errors_are_not_restarted(tmp_path):
    trainer = FailingTrainer(_cfg(tmp_path, "trainer.max_restarts=3"), ValueError("bad"), failures=1)
    with pytest.raises(ValueError, match="^bad$"):
        trainer.fit()
    assert trainer.resumes == ["never"]


def test_a_dead_worker_is_described_in_one_line():
    error = ray.exceptions.RayActorError(actor_id=None, error_msg="The actor died unexpectedly before finishing "
                                         "this task.\n\tclass_name: RolloutWorker\n\tpid: 12\nThe actor is dead "
                                         "because its worker process has died.")
    assert describe_failure(error, []) == ("a worker: the worker process died (The actor is dead because its "
                                           "worker process has died.)")


def test_a_worker_error_as_ray_raises_it_is_described_by_its_cause():
    """Ray raises a 'dual' instance (RayTaskError and the cause's class) that keeps only the cause."""
    error = ray.exceptions.RayTaskError(
        "update", "Traceback ...", RuntimeError("Read error: Connection reset by peer"),
        proctitle="ray::ActorWorker.update", actor_id="9473c1ab").as_instanceof_cause()
    assert isinstance(error, RuntimeError) and isinstance(error, ray.exceptions.RayTaskError)
    assert describe_failure(error, []) == ("a worker (ActorWorker.update) raised RuntimeError: Read error: "
                                           "Connection reset by peer")
