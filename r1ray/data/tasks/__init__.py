"""Task generators that write verl-layout prompt files (arithmetic, countdown, knights_knaves, gsm8k)."""

from r1ray.data.tasks.registry import TASKS, TaskSpec, get_task, make_task

__all__ = ["TASKS", "TaskSpec", "get_task", "make_task"]
