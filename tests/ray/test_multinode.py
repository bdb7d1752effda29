"""Several Ray nodes on one machine: a head and two more raylets started with `ray.cluster_utils.Cluster`,
each with 1 CPU, all on 127.0.0.1, and `r1ray train` joining them through `ray.address` as a user's job does
on a real cluster.

The config puts the actor's two FSDP2 ranks on two nodes (`placement.pools.train.nodes=2`, one device each)
and rollout plus reward on the third, so gradients are reduced, and the weight sync (fingerprint-checked
every step) crosses, a node boundary. The same run on one node (one pool node of two devices, in an
embedded cluster) is the reference: "two Ray nodes = one", bit for bit. Both runs fix every worker's torch
threads at 1 (`placement.threads_per_worker`): by default a one-node cluster gives a pool's workers the
node's CPUs and a multi-node one a bundle's, and a different thread count changes the order of the float
sums (the rollout engine's logprobs then differ in their last bits, 4.6e-8 against 5.0e-8).

Ray rewrites a loopback address to the machine's network address when a driver joins by address;
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, in this process (for the raylets it starts) and in the runs', keeps
every node and driver on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
RUN = ["trainer.total_steps=3", "trainer.save_every=1", "placement.threads_per_worker=1", "trainer.max_restarts=1",
       # A random model earns no task reward; the length reward differs between samples, so the weights move.
       "reward.functions=[auto,format,still3_length]", "reward.weights=[1.0,0.1,0.1]"]
OVER_TWO_NODES = ["placement.pools.train.nodes=2", "placement.pools.train.devices_per_node=1"]
RANK_ROW = re.compile(r"^(actor|rollout|reward)\s+(\d+)\s+\S+\s+\d+\s+\d+\s+\S+\s+\S+\s+\d+\s+([0-9a-f]{12})$", re.M)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                          "include_dashboard": False})
    try:
        for _ in range(2):
            nodes.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        nodes.wait_for_nodes()
        yield nodes
    finally:
        nodes.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def r1ray_train(config: Path, *overrides: str, address: str | None) -> subprocess.CompletedProcess:
    exe = shutil.which("r1ray")
    assert exe, "the r1ray console script is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(LOOPBACK_ENV)
    joined = [f"ray.address={address}"] if address else []
    return subprocess.run([exe, "train", "--config", str(config), *overrides, *joined], env=env, capture_output=True,
                          text=True, timeout=400)


@pytest.fixture(scope="module")
def config(tiny_model, small_config_file) -> tuple[Path, list[str]]:
    """The Ray tests' small GRPO run (tests/conftest.py), as a file for the CLI."""
    return small_config_file, [f"model.path={tiny_model}"]


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/"))} for r in rows]


def test_an_actor_over_two_nodes_trains_bit_for_bit_as_on_one_node(cluster, config, tmp_path):
    path, model = config
    multi = r1ray_train(path, *model, *RUN, *OVER_TWO_NODES, f"trainer.output_dir={tmp_path / 'multi'}",
                        address=cluster.address)
    assert multi.returncode == 0, multi.stderr[-3000:]
    # The rank table: the two actor ranks and the rollout engine each on a node of their own.
    nodes = {(role, int(rank)): node for role, rank, node in RANK_ROW.findall(multi.stderr)}
    assert set(nodes) == {("actor", 0), ("actor", 1), ("rollout", 0), ("reward", 0)}, multi.stderr[-3000:]
    assert len({nodes["actor", 0], nodes["actor", 1], nodes["rollout", 0]}) == 3
    assert nodes["reward", 0] == nodes["rollout", 0]

    one = r1ray_train(path, *model, *RUN, f"trainer.output_dir={tmp_path / 'one'}", address=None)
    assert one.returncode == 0, one.stderr[-3000:]
    assert len(set(RANK_ROW.findall(one.stderr)[i][2] for i in range(4))) == 1     # all on the one node

    # Every step's metrics (losses, gradient norms, rewards, the sampler's logprob gap) are equal, and so are
    # the actor's checkpointed shards (weights and optimizer state), byte for byte.
    assert metrics(tmp_path / "multi") == metrics(tmp_path / "one")
    assert [r["step"] for r in metrics(tmp_path / "one")] == [1, 2, 3]
    assert_same_shards(tmp_path / "one", tmp_path / "multi")


def assert_same_shards(a: Path, b: Path, step: int = 3) -> None:
    shards = sorted((a / "checkpoints" / f"step_{step:06d}" / "actor" / "engine").glob("*.distcp"))
    assert len(shards) == 2
    for shard in shards:
        other = b / "checkpoints" / f"step_{step:06d}" / "actor" / "engine" / shard.name
        assert shard.read_bytes() == other.read_bytes(), shard.name


def test_a_lost_actor_node_is_survived_from_the_newest_checkpoint(cluster, config, tmp_path):
    """The node holding an actor rank (one that is not the head's) is removed (as a crash: no graceful shutdown) once step 1's checkpoint
    is complete, and a replacement node joins: the run restarts from the newest complete checkpoint
    (`trainer.max_restarts`), logs every step once, and ends with the uninterrupted run's weights."""
    path, model = config
    straight = r1ray_train(path, *model, *RUN, *OVER_TWO_NODES, f"trainer.output_dir={tmp_path / 'straight'}",
                           address=cluster.address)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "lost"
    log = tmp_path / "lost.stderr"
    exe = shutil.which("r1ray")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **LOOPBACK_ENV}
    with open(log, "w") as stderr:
        run = subprocess.Popen([exe, "train", "--config", str(path), *model, *RUN, *OVER_TWO_NODES,
                                f"trainer.output_dir={out}", f"ray.address={cluster.address}"], env=env,
                               stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "step_000001" / "COMPLETE").is_file():
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        ranks = {(role, int(rank)): node for role, rank, node in RANK_ROW.findall(log.read_text())}
        lost = [n for r in (0, 1) for n in cluster.list_all_nodes()
                if n.node_id.startswith(ranks["actor", r]) and not n.head][0]
        cluster.remove_node(lost, allow_graceful=False)
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    stderr = log.read_text()
    assert run.returncode == 0, stderr[-3000:]
    # One restart. The failure reported first may be the lost rank's or a peer's: the other actor rank's
    # collective, or the rollout's weight-sync receive, fails as the rank goes, whichever ran into it first.
    assert stderr.count("restart 1 of 1 from") == 1 and "restart 2 of" not in stderr, stderr[-3000:]
    lost_rows = metrics(out)
    assert [r["step"] for r in lost_rows] == [1, 2, 3]                # every step once
    assert lost_rows == metrics(tmp_path / "straight")
    assert_same_shards(out, tmp_path / "straight")


def test_a_placement_the_nodes_cannot_hold_is_refused_before_any_worker_starts(cluster, config, tmp_path):
    """Three CPUs in all, but no node has the two a pool node of two devices needs."""
    path, model = config
    out = tmp_path / "out"
    done = r1ray_train(path, *model, *RUN, f"trainer.output_dir={out}", address=cluster.address)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: placement does not fit the cluster: pool 'train' needs 1 node(s) with {'CPU': 2.0} "
                      "each, only 0 node(s) have that much (the cluster's nodes: 3 x {CPU: 1})"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "worker placement" not in done.stderr
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
