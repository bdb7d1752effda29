"""Fixtures shared by the Ray tests: one local Ray cluster, one tiny model, a small config.

Starting Ray and its worker processes dominates the cost of these tests on a 2-core machine, so the
cluster and the tiny model are built once per session (per test process under `pytest -n 2`) and reused by
every test that asks for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One OpenMP/torch thread in the test processes and what they start (CLI runs, reward subprocesses): the two
# test processes of `-n 2` share the machine's cores, and ops spread over threads that the other process
# also wants wait on them. Workers get theirs from `placement.threads_per_worker` (1 in TEST_CONFIG).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Modules that run for a minute or more (seconds of one test process on 2 cores, `--durations`), heaviest
# first. Under `pytest -n 2 --dist loadscope` a module runs whole in one process and the next free process
# takes the next module in collection order; xdist's default order (most tests first) would put these
# few-test modules last, so that one of them ran alone at the end while the other process sat idle.
# Heaviest first (longest-processing-time order) leaves only the short modules for the end.
HEAVY_MODULES = {
    "tests/ray/test_multinode.py": 275, "tests/ray/test_free_running.py": 200, "tests/ray/test_smollm2.py": 190,
    "tests/e2e/test_pipeline_commands.py": 185, "tests/e2e/test_cli_train.py": 150,
    "tests/ray/test_checkpoint_resume.py": 145, "tests/deploy/test_ray_job.py": 100, "tests/ray/test_vllm_trainer.py": 90,
    "tests/ray/test_trainer_rewards.py": 90, "tests/ray/test_fsdp2_engine.py": 80, "tests/ray/test_async_grpo.py": 80,
    "tests/ray/test_vllm_tensor_parallel.py": 70, "tests/ray/test_disk_full.py": 65, "tests/ray/test_vllm_rollout.py": 60,
    "tests/ray/test_train_engines.py": 60, "tests/ray/test_fsdp2_gpu_readiness.py": 55,
}


def pytest_collection_modifyitems(config, items):
    """Heavy modules first, in HEAVY_MODULES order; the rest keep their order (a stable sort)."""
    items.sort(key=lambda item: -HEAVY_MODULES.get(item.nodeid.split("::")[0], 0))


# The tiny model every Ray test trains: big enough for FSDP to shard two decoder layers, small enough to
# start and step in well under a second.
TINY = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "max_position_embeddings": 256}


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session: 4 CPUs, so that a Trainer's placement (3 CPU bundles) fits
    beside the smaller groups other tests keep alive.

    R1RAY_LOOPBACK makes every rendezvous use 127.0.0.1, as the embedded cluster of `r1ray train` does;
    the Trainer run in-process finds Ray initialised and joins this cluster.
    """
    import ray

    from r1ray.controller.ray_cluster import NO_PRESTART

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, _system_config=NO_PRESTART,
             runtime_env={"env_vars": {"R1RAY_LOOPBACK": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from r1ray.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", **TINY)


# The run the Ray tests train: spelled out here rather than derived from configs/quickstart.yaml, whose
# shape (stages, sizes, placement) changes with what the quickstart demonstrates.
TEST_CONFIG = """
model: {init_tiny: false}
data:
  template: chat
  prompts_per_step: 2
  generate: {task: arithmetic, train_size: 32, val_size: 0, digits: 1}
rollout: {n: 4, temperature: 1.0, max_prompt_length: 48, max_response_length: 16}
algorithm: {adv_estimator: grpo, kl_placement: none}
actor: {lr: 1.0e-4, micro_batch_tokens: 1024}
reward: {functions: [auto, format], weights: [1.0, 0.1], processes: 1}
placement:
  pools:
    train: {nodes: 1, devices_per_node: 2, device: cpu, cpus_per_bundle: 1}
    gen: {nodes: 1, devices_per_node: 1, device: cpu, cpus_per_bundle: 1}
  actor: train
  ref: train
  rollout: gen
  reward: gen
  threads_per_worker: 1
trainer: {eval_every: 0, eval_before_train: false, startup_timeout_s: 120, collective_timeout_s: 120}
logging: {console: false, jsonl: true, tensorboard: false, wandb: false}
"""


@pytest.fixture(scope="session")
def small_config_file(tmp_path_factory) -> Path:
    """TEST_CONFIG as a file, for runs through the CLI (`model.path` still to be given)."""
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(TEST_CONFIG)
    return path


@pytest.fixture(scope="session")
def small_config(tiny_model, small_config_file):
    """`small_config(out_dir, *overrides)`: a small GRPO run of the tiny model (2 FSDP actor ranks, one
    rollout engine, one reward worker, no reference model) writing into `out_dir`."""
    from r1ray.config_load import load_config

    path = small_config_file

    def make(out_dir: Path, *overrides: str):
        return load_config(path, [f"model.path={tiny_model}", f"trainer.output_dir={out_dir}", *overrides])

    return make
