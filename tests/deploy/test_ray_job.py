"""`ray job submit` and `r1ray submit` against a real `ray start --head` with token authentication.

One cluster for the module: a head and a second node joined to it (`ray start --address`), 1 CPU each, on
127.0.0.1 with their own ports and the head's token, stopped by pid in the fixture's teardown (never `ray
stop`, which would end other developers' clusters too). Each job trains the quickstart for 2 steps; its
driver joins the cluster through RAY_ADDRESS rather than starting one of its own, and the quickstart's two
CPU bundles (actor; rollout and reward) cannot share a node, so every job runs across the two nodes: the
working directory the job uploads reaches the second node through the cluster, as on a real one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from local_ray_head import LocalHead

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 240
# A row of the worker placement table the driver logs: role, rank, ..., the Ray node's id (12 hex digits).
RANK_ROW = re.compile(r"^(actor|rollout|reward)\s+\d+\s+\S+\s+\d+\s+\d+\s+\S+\s+\S+\s+\d+\s+([0-9a-f]{12})$", re.M)


@pytest.fixture(scope="module")
def head():
    server = LocalHead(num_cpus=1)
    try:
        server.start()
        server.add_node(num_cpus=1)
        yield server
    finally:
        left = server.stop()
    assert not left, f"processes of the test head still alive: {left}"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """An experiment folder as a user has it: the config and nothing else to upload."""
    folder = tmp_path_factory.mktemp("experiment")
    shutil.copy(REPO / "configs" / "quickstart.yaml", folder / "quickstart.yaml")
    return folder


def tiny(out: Path, *extra: str) -> list[str]:
    """The quickstart as one GRPO run (no SFT stage) of 2 steps, with absolute outputs: the job runs in an
    unpacked copy of the folder, which is gone when it ends."""
    return [f"trainer.output_dir={out}", f"model.path={out}/tiny-model", "model.tiny_hidden=32", "stages=[]",
            "trainer.total_steps=2", "trainer.eval_every=0", "trainer.eval_before_train=false",
            "data.generate.train_size=64", "data.generate.val_size=0", "data.prompts_per_step=4", "rollout.n=4",
            "algorithm.kl_placement=none", "logging.wandb=false", "logging.tensorboard=false",
            "placement.threads_per_worker=1", *extra]


def run(cmd: list[str], env: dict[str, str], timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_trained(out: Path, steps: int = 2) -> None:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in trained] == list(range(1, steps + 1)), rows


def job_logs(head: LocalHead, submission_id: str) -> str:
    return run(["ray", "job", "logs", submission_id, "--address", head.address], head.env(), 60).stdout


def test_the_job_api_refuses_requests_without_the_token(head):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=10)
    assert err.value.code == 401
    anonymous = run(["ray", "job", "list", "--address", head.address], head.env(token=False), 60)
    assert anonymous.returncode != 0


def test_ray_job_submit_runs_the_quickstart(head, experiment, tmp_path):
    out = tmp_path / "run"
    done = run(["ray", "job", "submit", "--address", head.address, "--working-dir", str(experiment),
                "--submission-id", "r1ray-ray-cli", "--", "python", "-m", "r1ray.train",
                "--config", "quickstart.yaml", *tiny(out)], head.env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = run(["ray", "job", "status", "r1ray-ray-cli", "--address", head.address], head.env(), 60)
    assert "succeeded" in (status.stdout + status.stderr).lower()
    assert_trained(out)
    logs = job_logs(head, "r1ray-ray-cli")
    assert "ray: cluster at" in logs and "local cluster" not in logs, logs[-3000:]
    # The rank table: the actor on one node, rollout and reward on the other.
    nodes = {role: node for role, node in RANK_ROW.findall(logs)}
    assert set(nodes) == {"actor", "rollout", "reward"}, logs[-3000:]
    assert nodes["actor"] != nodes["rollout"] == nodes["reward"], logs[-3000:]


def test_r1ray_submit_waits_for_success(head, experiment, tmp_path):
    out = tmp_path / "run"
    env = {**head.env(), "WANDB_API_KEY": "wandb-secret-value-1234",
           "RAY_ADDRESS": "http://127.0.0.1:9"}  # --address must win over the environment
    done = run([sys.executable, "-m", "r1ray.controller.cli", "submit", "--config", str(experiment / "quickstart.yaml"),
                "--address", head.address, "--submission-id", "r1ray-submit-ok", "--wait",
                *tiny(out)], env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "submitted: r1ray-submit-ok" in done.stdout
    assert "ray job logs -f r1ray-submit-ok" in done.stdout
    assert "job r1ray-submit-ok: SUCCEEDED" in done.stdout
    assert '"WANDB_API_KEY": "***"' in done.stdout and "wandb-secret-value-1234" not in done.stdout + done.stderr
    assert_trained(out)


def test_r1ray_submit_wait_exits_1_when_the_job_fails(head, experiment, tmp_path):
    done = run([sys.executable, "-m", "r1ray.controller.cli", "submit", "--config", str(experiment / "quickstart.yaml"),
                "--address", head.address, "--submission-id", "r1ray-submit-bad", "--wait", "--no-validate",
                f"trainer.output_dir={tmp_path}", "trainer.total_steps=not-a-number"], head.env())
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "job r1ray-submit-bad: FAILED" in done.stdout
    assert "trainer.total_steps" in done.stdout  # the driver's config error, streamed back
