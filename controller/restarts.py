"""Worker failures during a run: which exceptions a restart can cure, and naming the worker behind one.

A restart tears every group down and builds them again from the newest complete checkpoint (Trainer.fit).
What it can cure is a worker lost to its process or machine (killed, OOM, preempted), an exception in a
worker (a transient fault: a node's disk, a flaky device), or a collective that hung past its deadline. A
deterministic bug fails again on every restart, then stops the run naming the same worker and cause.
"""

from __future__ import annotations

import re

import ray

from r1ray.workers.fingerprint import WeightSyncError
from r1ray.workers.group import WorkerGroup, WorkerStartupError

RESTARTABLE: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,          # the worker process is gone (killed, OOM, node lost)
    ray.exceptions.RayTaskError,           # a worker method raised (its cause is kept)
    ray.exceptions.GetTimeoutError,
    WeightSyncError,                       # a sync that timed out or did not land
    WorkerStartupError,                    # a restarted group that could not come up in time
)
CAUSE_CHARS = 400          # of a worker's error text in the one-line message
ACTOR_ID = re.compile(r"actor_id=([0-9a-f]+)")      # in Ray's header: ray::Cls.method() (pid=.., actor_id=..)
METHOD = re.compile(r"ray::([\w.]+)\(\)")


def worker_names(groups: list[WorkerGroup]) -> dict[str, str]:
    """Ray actor id (hex) -> "role 'rollout' rank 0", for every worker of the groups."""
    return {w._actor_id.hex(): f"role '{g.role}' rank {rank}" for g in groups for rank, w in enumerate(g.workers)}


def describe_failure(exc: BaseException, groups: list[WorkerGroup]) -> str:
    """One line: which worker failed and why (Ray's multi-line reports cut to their first lines)."""
    names = worker_names(groups)
    if isinstance(exc, ray.exceptions.RayTaskError):
        actor_id, function = _task_origin(exc)
        who = names.get(actor_id, f"a worker ({function})")
        cause = exc.__dict__.get("cause") or exc
        return f"{who} raised {type(cause).__name__}: {_one_line(str(cause))}"
    if isinstance(exc, ray.exceptions.RayActorError):
        who = names.get(_hex(exc.actor_id), "a worker")
        return f"{who}: the worker process died ({_one_line(_died_reason(exc))})"
    return f"{type(exc).__name__}: {_one_line(str(exc))}"


def _task_origin(exc: ray.exceptions.RayTaskError) -> tuple[str | None, str]:
    """(actor id, method) of a worker's error. What Ray raises is usually a "dual" instance, a subclass of
    both RayTaskError and the cause's class, which keeps only the cause: its attributes then forward to
    the cause, so the origin is read from the header Ray wrote into its text."""
    actor_id = _hex(exc.__dict__.get("_actor_id"))
    function = exc.__dict__.get("function_name") or "unknown method"
    text = str(exc)
    if actor_id is None and (found := ACTOR_ID.search(text)):
        actor_id = found.group(1)
    if function == "unknown method" and (found := METHOD.search(text)):
        function = found.group(1)
    return actor_id, function


def _died_reason(exc: ray.exceptions.RayActorError) -> str:
    """Ray's death report without its header and field lines: the exit type and detail."""
    lines = [line.strip() for line in str(getattr(exc, "error_msg", exc)).splitlines()]
    detail = [line for line in lines[1:] if line and ":" not in line.split(" ")[0]]
    return " ".join(detail) or lines[0]


def _hex(actor_id) -> str | None:
    if actor_id is None:
        return None
    return actor_id if isinstance(actor_id, str) else actor_id.hex()


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= CAUSE_CHARS else flat[:CAUSE_CHARS] + " ..."
