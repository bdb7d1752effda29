"""`r1ray submit`: run a config as a Ray job on an existing cluster, the way `ray job submit` would.

The job's driver is `python -m r1ray.train --config <file> overrides...`, run inside the uploaded working
directory; its `ray.init()` finds RAY_ADDRESS (set by the job) and joins the cluster instead of starting one.

Secrets reach the job only from this process's environment (WANDB_API_KEY, HF_TOKEN, and names given with
--forward-env), never from the command line, where shell history and `ps` would keep them; what is printed
about the job has them redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TextIO
from urllib.parse import urlparse

from r1ray.controller.redact import redact, redact_env

DEFAULT_ADDRESS = "http://127.0.0.1:8265"

# Outputs and weights never belong in the upload: Ray caps a working directory at a few hundred MB, and a
# stale checkpoint shipped to the cluster could be resumed by mistake.
DEFAULT_EXCLUDES = (".git", "checkpoints", "runs", "wandb", "tensorboard", "__pycache__", ".pytest_cache",
                    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf")

# Forwarded when set: what trackers and the hub need. RAY_* is left out on purpose: the cluster has its own
# token, and the job's environment is visible to everyone who can read the Job API.
FORWARDED_ENV = ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_MODE", "WANDB_BASE_URL",
                 "HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE")
# Printed in clear: settings, not credentials. Every other forwarded value prints as ***.
PLAIN_ENV = ("WANDB_ENTITY", "WANDB_PROJECT", "WANDB_MODE", "WANDB_BASE_URL", "HF_ENDPOINT", "HF_HUB_OFFLINE")

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(ValueError):
    """A job that cannot be built or submitted as asked; the message says how to fix it."""


@dataclass(frozen=True)
class JobSpec:
    """What `submit_job` receives: the driver command and its runtime environment."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    submission_id: str | None = None

    def describe(self) -> dict[str, Any]:
        """The job as it may be printed or logged: env var values and secret-looking fields redacted."""
        env = redact_env(self.runtime_env.get("env_vars", {}), visible=PLAIN_ENV)
        shown = redact({**self.runtime_env, "env_vars": env})
        return {"entrypoint": self.entrypoint, "runtime_env": shown, "submission_id": self.submission_id}


def resolve_address(address: str | None, environ: Mapping[str, str]) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS (as `ray job submit` reads them), else local."""
    return address or environ.get("RAY_API_SERVER_ADDRESS") or environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def cleartext_warning(address: str) -> str | None:
    """A warning when the token would cross the network unencrypted; None for loopback or https."""
    parsed = urlparse(address if "://" in address else f"http://{address}")
    if parsed.scheme != "http" or parsed.hostname in ("127.0.0.1", "localhost", "::1"):
        return None
    return (f"{address} is plain http: the cluster's token crosses the network unencrypted; reach the dashboard "
            f"through an SSH tunnel or kubectl port-forward (http://127.0.0.1:8265) or https")


# Markers of a source checkout. The job's working directory comes first on the driver's sys.path, so an
# uploaded r1ray/ would be imported instead of the installed package, and that folder alone lacks
# r1ray.workers and r1ray.controller (setup.py maps them from workers/ and controller/).
CHECKOUT_MARKERS = ("r1ray/__init__.py", "setup.py")


def refuse_checkout(root: Path) -> None:
    """Raise SubmitError if `root` looks like the r1ray checkout (or another Python project's root)."""
    found = next((marker for marker in CHECKOUT_MARKERS if (root / marker).is_file()), None)
    if found:
        raise SubmitError(f"--working-dir {root} holds {found}: uploaded, it would shadow the installed r1ray "
                          f"package on the cluster; pass --working-dir configs (or your experiment folder)")


def locate_config(config: str | Path, working_dir: str | Path | None) -> tuple[Path, str]:
    """(working dir, config path relative to it); the working dir defaults to the config's folder."""
    config_path = Path(config).resolve()
    if not config_path.is_file():
        raise SubmitError(f"--config {config}: file not found")
    root = Path(working_dir).resolve() if working_dir else config_path.parent
    if not root.is_dir():
        raise SubmitError(f"--working-dir {working_dir}: not a directory")
    refuse_checkout(root)
    try:
        relative = config_path.relative_to(root)
    except ValueError:
        raise SubmitError(f"--config {config} is outside the working directory {root}; the job only sees what "
                          f"is uploaded, so pass --working-dir a folder that contains the config") from None
    return root, relative.as_posix()


def build_entrypoint(config_rel: str, overrides: Sequence[str]) -> str:
    """The driver command; quoted because Ray runs the entrypoint through a shell."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise SubmitError(f"override '{bad[0]}': write it as section.key=value, e.g. trainer.total_steps=10")
    words = ["python", "-m", "r1ray.train", "--config", config_rel, *overrides]
    return " ".join(shlex.quote(w) for w in words)


def forwarded_env(environ: Mapping[str, str], extra_names: Sequence[str] = ()) -> dict[str, str]:
    """Values of FORWARDED_ENV and `extra_names` that are set in `environ`."""
    for name in extra_names:
        if "=" in name or not name:
            raise SubmitError(f"--forward-env {name.split('=', 1)[0]}=...: give only the variable's name; its value "
                              f"is read from your environment so that it never appears on a command line")
    names = dict.fromkeys([*FORWARDED_ENV, *extra_names])
    return {name: environ[name] for name in names if environ.get(name)}


def build_job(config: str | Path, overrides: Sequence[str] = (), *, working_dir: str | Path | None = None,
              excludes: Sequence[str] = (), forward_env: Sequence[str] = (),
              environ: Mapping[str, str] | None = None, submission_id: str | None = None) -> JobSpec:
    """The JobSpec of one r1ray run; nothing is contacted."""
    environ = os.environ if environ is None else environ
    root, config_rel = locate_config(config, working_dir)
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": [*DEFAULT_EXCLUDES, *excludes]}
    env = forwarded_env(environ, forward_env)
    if env:
        runtime_env["env_vars"] = env
    metadata = {"r1ray_config": config_rel, "r1ray_overrides": " ".join(overrides)}
    return JobSpec(build_entrypoint(config_rel, overrides), runtime_env, metadata, submission_id)


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def validate_in_working_dir(job: JobSpec, overrides: Sequence[str]) -> None:
    """Load the config as the job's driver will (relative paths start at the working dir), so that a typo
    fails here and not after the upload."""
    from r1ray.config_load import load_config

    with chdir(Path(job.runtime_env["working_dir"])):
        load_config(job.metadata["r1ray_config"], overrides)


@contextlib.contextmanager
def _address_wins(address: str) -> Iterator[None]:
    """Ray's SDK prefers RAY_API_SERVER_ADDRESS/RAY_ADDRESS over its `address` argument; point the former at
    the address we resolved so that --address means what it says."""
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def client(address: str):
    """A JobSubmissionClient for `address`; Ray adds the token header itself when RAY_AUTH_MODE=token."""
    from ray.job_submission import JobSubmissionClient

    try:
        with _address_wins(address):
            return JobSubmissionClient(address)
    except Exception as exc:  # connection, HTTP and authentication failures come as several types
        raise SubmitError(f"cannot reach the Ray job API at {address}: {_first_line(exc)}{_auth_hint(exc)}") from exc


def submit(job: JobSpec, address: str) -> str:
    """Submit the job; returns its submission id."""
    jobs = client(address)
    try:
        return jobs.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env, metadata=job.metadata,
                               submission_id=job.submission_id)
    except Exception as exc:
        raise SubmitError(f"job submission to {address} failed: {_first_line(exc)}{_auth_hint(exc)}") from exc


def follow(address: str, submission_id: str, out: TextIO) -> str:
    """Stream the job's logs to `out` until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED)."""
    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(submission_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    # The log stream closes a moment before the status is final.
    status = _status_name(jobs.get_job_status(submission_id))
    for _ in range(50):
        if status in TERMINAL:
            break
        time.sleep(0.2)
        status = _status_name(jobs.get_job_status(submission_id))
    return status


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status)).rsplit(".", 1)[-1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _auth_hint(exc: BaseException) -> str:
    text = str(exc)
    if "401" in text or "403" in text or "uthentication" in text:
        return ("; the cluster uses token authentication: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                "(or RAY_AUTH_TOKEN_PATH) with the cluster's token")
    return ""
