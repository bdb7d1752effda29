"""Fixtures shared by tests/ray and tests/e2e: one local Ray cluster, one tiny model, small configs.

Starting Ray and its worker processes dominates the cost of these tests on a 2-core machine, so the
cluster and the tiny model are built once per session and reused by every test that asks for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

# The tiny model every Ray test trains: big enough for FSDP to shard two decoder layers, small enough to
# start and step in well under a second.
TINY = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "max_position_embeddings": 256}


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session (4 CPUs: the quickstart placement needs 3 bundles).

    R1RAY_LOOPBACK makes every rendezvous use 127.0.0.1, as the embedded cluster of `r1ray train` does;
    the Trainer run in-process finds Ray initialised and joins this cluster.
    """
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"R1RAY_LOOPBACK": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from r1ray.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", **TINY)


def small_config(model_path: Path, out_dir: Path, *overrides: str):
    """The quickstart config shrunk for tests: the tiny model above, short prompts and responses, no
    trackers but metrics.jsonl, no reference model (KL off) unless an override asks for one."""
    from r1ray.config import load_config

    base = [
        f"model.path={model_path}", "model.init_tiny=false",
        f"trainer.output_dir={out_dir}", "trainer.eval_every=0", "trainer.eval_before_train=false",
        "trainer.startup_timeout_s=120", "trainer.collective_timeout_s=120",
        "data.prompts_per_step=2", "data.generate.train_size=32", "data.generate.val_size=0",
        "rollout.n=4", "rollout.max_prompt_length=48", "rollout.max_response_length=16",
        "actor.micro_batch_tokens=1024", "algorithm.kl_placement=none",
        "logging.wandb=false", "logging.tensorboard=false", "logging.console=false",
    ]
    return load_config(QUICKSTART, [*base, *overrides])
