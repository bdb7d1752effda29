"""Several Ray nodes on one machine: a head and two more raylets started with `ray.cluster_utils.Cluster`,
each with 1 CPU, all on 127.0.0.1, and `r1ray train` joining them through `ray.address` as a user's job does
on a real cluster.

The config puts the actor's two FSDP2 ranks on two nodes (`placement.pools.train.nodes=2`, one device each)
and rollout plus reward on a third, so gradients are reduced, and the weight sync (fingerprint-checked
every step) crosses, a node boundary. That run also loses the node of an actor rank, then the rollout's
node, and restarts twice from its newest checkpoint. The same run on one node (one pool node of two
devices, in an embedded cluster), uninterrupted, is the reference: "two Ray nodes = one" and "a resumed
run = an uninterrupted one", bit for bit, checked together by one pair of runs. Both runs fix every
worker's torch threads at 1 (`placement.threads_per_worker`): by default a one-node cluster gives a pool's
workers the node's CPUs and a multi-node one a bundle's, and a different thread count changes the order
of the float sums (the rollout engine's logprobs then differ in their last bits, 4.6e-8 against 5.0e-8).

A run of DeepSpeed ZeRO-3 over two nodes with vLLM's engine on a third is the run whose actor node is then
lost with no replacement (it needs to train only until its first checkpoint, so one run covers both).

Ray rewrites a loopback address to the machine's network address when a driver joins by address;
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, in this process (for the raylets it starts) and in the runs', keeps
every node and driver on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Five steps: after step 1's checkpoint a node is removed, and the run must still be going then (three tiny
# steps could all finish between the test seeing that checkpoint and the removal).
STEPS = 5
RUN = [f"trainer.total_steps={STEPS}", "trainer.save_every=1", "placement.threads_per_worker=1", "trainer.max_restarts=1",
       # A random model earns no task reward; the length reward differs between samples, so the weights move.
       "reward.functions=[auto,format,still3_length]", "reward.weights=[1.0,0.1,0.1]"]
OVER_TWO_NODES = ["placement.pools.train.nodes=2", "placement.pools.train.devices_per_node=1"]
RESUMED = re.compile(r"^(\S+ \S+) INFO r1ray.controller.trainer: resumed from", re.M)
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


@pytest.fixture(scope="module")
def one_node(config, tmp_path_factory) -> tuple[Path, str]:
    """The run on one node (an embedded cluster), uninterrupted: its output directory and stderr."""
    path, model = config
    out = tmp_path_factory.mktemp("one_node") / "out"
    done = r1ray_train(path, *model, *RUN, f"trainer.output_dir={out}", address=None)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stderr


@dataclass
class Survived:
    out: Path                          # output of the run over the nodes
    stderr: str
    returncode: int


@pytest.fixture(scope="module")
def survived(cluster, config, tmp_path_factory) -> Survived:
    """The run over the nodes, losing the node of an actor rank once step 1's checkpoint is complete and,
    after the restart, the rollout's (and reward's) node once a newer one is; a replacement joins each time.
    The head's CPU is held by another job, and a fourth node added, so that both roles land on removable
    nodes."""
    path, model = config
    tmp = tmp_path_factory.mktemp("survived")
    out, log = tmp / "out", tmp / "out.stderr"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **LOOPBACK_ENV}
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    holder = subprocess.Popen([sys.executable, "-c", HEAD_HOLDER, cluster.address], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    run = None
    try:
        assert holder.stdout.readline().strip() == "holding"
        with open(log, "w") as stderr:
            run = subprocess.Popen([shutil.which("r1ray"), "train", "--config", str(path), *model, *RUN, *OVER_TWO_NODES,
                                    "trainer.max_restarts=2", f"trainer.output_dir={out}",
                                    f"ray.address={cluster.address}"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=stderr, text=True)
        complete = lambda step: (out / "checkpoints" / f"step_{step:06d}" / "COMPLETE").is_file()  # noqa: E731
        wait_for(lambda: complete(1), run, log)
        cluster.remove_node(node_of(cluster, log.read_text(), "actor", 1), allow_graceful=False)
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        wait_for(lambda: RESUMED.search(log.read_text()), run, log)
        resumed_at = int(re.search(r"resumed from \S*step_(\d+)", log.read_text())[1])
        wait_for(lambda: complete(resumed_at + 1), run, log)
        text = log.read_text()
        rollout = node_of(cluster, text, "rollout", 0)
        assert rollout.node_id.startswith(node_of(cluster, text, "reward", 0).node_id[:12])
        cluster.remove_node(rollout, allow_graceful=False)
        removed, removed_at = time.monotonic(), datetime.now()
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        run.wait(timeout=300)
        stderr = log.read_text()
        again = (datetime.strptime(RESUMED.findall(stderr)[-1], "%Y-%m-%d %H:%M:%S,%f") - removed_at).total_seconds()
        print(f"lost rollout node: training again {again:.1f} s after the removal, the run ended "
              f"{time.monotonic() - removed:.1f} s after it")
    finally:
        holder.kill()
        if run is not None and run.poll() is None:
            run.kill()
        # The module's three nodes again: the head and two of 1 CPU, as Ray counts them.
        for node in [n for n in cluster.list_all_nodes() if not n.head][2:]:
            cluster.remove_node(node)
        deadline = time.monotonic() + 60
        while alive_nodes(cluster) != 3 and time.monotonic() < deadline:
            time.sleep(0.5)
    return Survived(out, stderr, run.returncode)


def test_an_actor_over_two_nodes_trains_bit_for_bit_as_on_one_node(survived, one_node):
    # The first start's rank table: the two actor ranks and the rollout engine each on a node of their own.
    first_start = survived.stderr.split("restart 1 of 2")[0]
    nodes = {(role, int(rank)): node for role, rank, node in RANK_ROW.findall(first_start)}
    assert set(nodes) == {("actor", 0), ("actor", 1), ("rollout", 0), ("reward", 0)}, first_start[-3000:]
    assert len({nodes["actor", 0], nodes["actor", 1], nodes["rollout", 0]}) == 3
    assert nodes["reward", 0] == nodes["rollout", 0]
    assert len({node for _, _, node in RANK_ROW.findall(one_node[1])}) == 1     # all on the one node

    # Every step's metrics (losses, gradient norms, rewards, the sampler's logprob gap) are equal, and so are
    # the actor's checkpointed shards (weights and optimizer state), byte for byte.
    assert survived.returncode == 0, survived.stderr[-3000:]
    assert metrics(survived.out) == metrics(one_node[0])
    assert [r["step"] for r in metrics(one_node[0])] == list(range(1, STEPS + 1))
    assert_same_shards(one_node[0], survived.out)


def assert_same_shards(a: Path, b: Path, step: int = STEPS) -> None:
    shards = sorted((a / "checkpoints" / f"step_{step:06d}" / "actor" / "engine").glob("*.distcp"))
    assert len(shards) == 2
    for shard in shards:
        other = b / "checkpoints" / f"step_{step:06d}" / "actor" / "engine" / shard.name
        assert shard.read_bytes() == other.read_bytes(), shard.name


def start_and_lose_an_actor_node(cluster, config, out: Path, *extra: str):
    """`r1ray train` over the cluster; once step 1's checkpoint is complete, the node of an actor rank (one
    that is not the head) is removed as a crash would take it, and none replaces it. Returns (the finished
    process, its stderr, seconds from the removal to the end of the run)."""
    path, model = config
    log = out.parent / f"{out.name}.stderr"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **LOOPBACK_ENV}
    with open(log, "w") as stderr:
        run = subprocess.Popen([shutil.which("r1ray"), "train", "--config", str(path), *model, *RUN, *OVER_TWO_NODES,
                                *extra, f"trainer.output_dir={out}", f"ray.address={cluster.address}"], env=env,
                               stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        wait_for(lambda: (out / "checkpoints" / "step_000001" / "COMPLETE").is_file(), run, log)
        ranks = {(role, int(rank)): node for role, rank, node in RANK_ROW.findall(log.read_text())}
        lost = [n for r in (0, 1) for n in cluster.list_all_nodes()
                if n.node_id.startswith(ranks["actor", r]) and not n.head][0]
        cluster.remove_node(lost, allow_graceful=False)
        removed = time.monotonic()
        run.wait(timeout=300)
        return run, log.read_text(), time.monotonic() - removed
    finally:
        if run.poll() is None:
            run.kill()


# Holds the head node's one CPU (an actor on the head's own resource) until killed, so that every pool lands
# on a node the test can remove: Ray never removes a cluster's head.
HEAD_HOLDER = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=1, resources={"node:__internal_head__": 0.001})
class Hold:
    def ready(self):
        return True

holder = Hold.remote()
ray.get(holder.ready.remote())
print("holding", flush=True)
while True:
    time.sleep(1)
"""


def wait_for(condition, run: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def node_of(cluster, text: str, role: str, rank: int):
    """The cluster node (not the head) holding `role` `rank` in the newest rank table of `text`."""
    node = [n for r, k, n in RANK_ROW.findall(text) if (r, int(k)) == (role, rank)][-1]
    return [n for n in cluster.list_all_nodes() if n.node_id.startswith(node) and not n.head][0]


def test_lost_actor_and_rollout_nodes_are_survived_from_the_newest_checkpoint(survived, one_node):
    """The run over the nodes (`survived`) restarts from the newest complete checkpoint after each lost node
    (`trainer.max_restarts`), logs every step once, and ends with the uninterrupted run's metrics and weights."""
    stderr = survived.stderr
    assert survived.returncode == 0, stderr[-3000:]
    for restart in (1, 2):
        assert stderr.count(f"restart {restart} of 2 from") == 1, stderr[-3000:]
    assert len(RESUMED.findall(stderr)) == 2
    lost_rows = metrics(survived.out)
    assert [r["step"] for r in lost_rows] == list(range(1, STEPS + 1))   # every step once
    assert lost_rows == metrics(one_node[0])                           # the uninterrupted run's
    assert_same_shards(survived.out, one_node[0])


def test_a_placement_the_nodes_cannot_hold_is_refused_before_any_worker_starts(cluster, config, tmp_path):
    """Three CPUs in all, but no node has the two a pool node of two devices needs."""
    path, model = config
    out = tmp_path / "out"
    done = r1ray_train(path, *model, *RUN, f"trainer.output_dir={out}", address=cluster.address)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: placement does not fit the cluster: pool 'train' needs 1 node(s) with {CPU: 2} "
                      "each, only 0 node(s) have that much; the cluster's nodes: 3 x {CPU: 1}"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "worker placement" not in done.stderr
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_deepspeed_over_two_nodes_with_vllm_on_a_third_and_no_node_to_replace_a_lost_one(cluster, tmp_path):
    """DeepSpeed ZeRO-3's two ranks on two nodes and vLLM's engine on the third (where both are installed, as
    in CI; FSDP2 and the HF engine otherwise) train until step 1's checkpoint: gradients and ZeRO-3's
    parameter gathers cross the node boundary, and the weight sync into vLLM (fingerprint-checked) too.
    Then an actor node is lost with no replacement: the restart cannot place the groups again, and the run
    ends within `trainer.startup_timeout_s` with one line saying what the cluster lacks, instead of waiting
    for ever."""
    from r1ray.models import build_tiny_model
    from tests.conftest import TEST_CONFIG

    path = tmp_path / "small.yaml"
    path.write_text(TEST_CONFIG)
    # vLLM's CPU attention wants a head size of 32 or more.
    model = build_tiny_model(tmp_path / "model", hidden=64, layers=2, heads=2, kv_heads=1, max_position_embeddings=256)
    engines = [f"actor.engine={'deepspeed' if HAS_DEEPSPEED else 'fsdp2'}", "actor.zero_stage=3",
               f"rollout.engine={'vllm' if HAS_VLLM else 'hf'}"]
    try:
        run, stderr, seconds = start_and_lose_an_actor_node(cluster, (path, [f"model.path={model}"]), tmp_path / "out",
                                                         *engines, "trainer.startup_timeout_s=60",
                                                         "trainer.total_steps=100")
    finally:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")          # the module's three nodes again
    print(f"no capacity: the run ended {seconds:.1f} s after the removal")
    nodes = {(role, int(rank)): node for role, rank, node in RANK_ROW.findall(stderr)}
    assert len({nodes["actor", 0], nodes["actor", 1], nodes["rollout", 0]}) == 3, stderr[-3000:]
    first = metrics(tmp_path / "out")[0]
    assert first["step"] == 1 and first["actor/grad_norm"] > 0, first
    assert first["rollout/logprob_gap"] < (1e-2 if HAS_VLLM else 1e-3), first      # the engine sampled the actor's weights
    assert run.returncode != 0 and "restart 1 of 1 from" in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    print(errors[0])
    # Refused at once if the cluster already counts the node dead ("CPU: placement needs 3, cluster has 2"),
    # else when the placement-group wait ends (naming the pool); either way naming the nodes there are.
    assert ("placement does not fit the cluster" in errors[0] or "placement groups became ready within 60s"
            in errors[0]) and "the cluster's nodes" in errors[0], errors[0]
    assert seconds < 60 + 60, seconds


# ---- storage the nodes do not share ------------------------------------------------------------------


def alive_nodes(cluster) -> int:
    """Alive nodes of the cluster, from its GCS (the `Cluster`'s own client: this process never joins it)."""
    return sum(1 for node in cluster.global_state.node_table() if node["Alive"])


# A raylet joining the cluster at argv[1], as `Cluster.add_node` starts one (`ray start` refuses to join with
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), until SIGTERM.
NODE_SCRIPT = """
import signal, sys, time
import ray._private.node, ray._private.parameter
params = ray._private.parameter.RayParams(
    gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0,
    object_store_memory=150 * 1024 * 1024, min_worker_port=0, max_worker_port=0, include_log_monitor=False,
    node_manager_port=0)
params.dashboard_agent_listen_port = None
node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"""


def start_unshared_node(address: str, hidden: Path, log: Path) -> subprocess.Popen:
    """A node of 1 CPU joining the cluster in a mount namespace of its own, where `hidden` is an empty tmpfs:
    the local disk of a machine that does not mount the storage the head node writes to."""
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **LOOPBACK_ENV}
    command = f'mount -t tmpfs r1ray-local {hidden} && exec "$0" -c "$1" {address}'
    with open(log, "a") as stderr:
        return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", command, sys.executable,
                                 NODE_SCRIPT], env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)


def test_an_output_dir_the_actors_nodes_do_not_share_is_refused_before_any_worker_starts(cluster, config, tmp_path):
    """Two more nodes whose view of the output directory's parent is a disk of their own (a tmpfs mounted in
    their own mount namespace). The actor's four ranks on four of the five nodes cannot all be on the
    shared ones: the run must stop at start, naming the ranks and nodes that cannot read the directory,
    before a worker starts or a checkpoint is written."""
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not let the tests create mount namespaces (unshare -m), which model a "
                    "node with a disk of its own")
    path, model = config
    hidden = tmp_path / "storage"
    hidden.mkdir()
    nodes: list[subprocess.Popen] = []
    try:
        for count in (4, 5):              # one at a time: two raylets starting at once can miss their deadline
            nodes.append(start_unshared_node(cluster.address, hidden, tmp_path / "nodes.log"))
            deadline = time.monotonic() + 120
            while alive_nodes(cluster) < count:
                assert time.monotonic() < deadline and nodes[-1].poll() is None, (tmp_path / "nodes.log").read_text()[-3000:]
                time.sleep(0.5)
        out = hidden / "out"
        done = r1ray_train(path, *model, *RUN, "placement.pools.train.nodes=4", "placement.pools.train.devices_per_node=1",
                           f"trainer.output_dir={out}", address=cluster.address)
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            node.wait(timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    print(errors[0])
    assert re.fullmatch(
        rf"error: trainer\.output_dir: {re.escape(str(out))} is not on storage the actor's nodes share: a file the "
        rf"driver wrote there cannot be read by actor ranks? [\d, ]+ on ray node [0-9a-f]{{12}}(; ranks? [\d, ]+ on ray "
        rf"node [0-9a-f]{{12}})?, so each node would keep its own part of every checkpoint and no resume could load "
        rf"one; use a path every node mounts \(NFS, a shared volume such as deploy/kuberay/pvc-shared\.yaml\)",
        errors[0]), errors[0]
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    assert not list(out.glob(".r1ray-storage-probe-*"))          # the probe is gone
