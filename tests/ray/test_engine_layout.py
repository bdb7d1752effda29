"""How a rollout pool's bundles become vLLM engines: tensor-parallel engines take consecutive bundles of one
node, their workers are numbered by engine, and weight-sync ranks follow the engine's position (no gaps)."""

from __future__ import annotations

import pytest

from r1ray.workers.placement import WorkerSlot
from r1ray.workers.role_groups import engine_slots, sync_world_size


def _pool(nodes: int, per_node: int, gpus: float = 1.0) -> list[WorkerSlot]:
    groups = [object() for _ in range(nodes)]
    return [WorkerSlot(role="rollout", rank=n * per_node + b, pool="gen", node_index=n, bundle_index=b,
                       placement_group=groups[n], num_cpus=4.0, num_gpus=gpus)
            for n in range(nodes) for b in range(per_node)]


def test_tp2_on_one_node_of_8_gpus():
    engines = engine_slots(_pool(1, 8), tp=2, on_gpu=True)
    assert [e.slot.rank for e in engines] == [0, 1, 2, 3]
    assert [e.bundle_indices for e in engines] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [e.sync_rank_offset for e in engines] == [1, 3, 5, 7]          # not 1, 5, 9, 13
    assert sync_world_size(engines, 2) == 9
    # vLLM's Ray executor starts the TP workers on the bundles' GPUs; the engine's worker holds none.
    assert all(e.slot.num_gpus == 0.0 and e.slot.num_cpus == 4.0 for e in engines)


def test_tp4_over_two_nodes_keeps_each_engine_on_one_node():
    engines = engine_slots(_pool(2, 8), tp=4, on_gpu=True)
    assert [(e.slot.node_index, e.bundle_indices) for e in engines] == [
        (0, (0, 1, 2, 3)), (0, (4, 5, 6, 7)), (1, (0, 1, 2, 3)), (1, (4, 5, 6, 7))]
    assert [e.sync_rank_offset for e in engines] == [1, 5, 9, 13] and sync_world_size(engines, 4) == 17


def test_tp1_engines_keep_their_bundle_and_device():
    engines = engine_slots(_pool(1, 3, gpus=0.5), tp=1, on_gpu=True)
    assert [e.sync_rank_offset for e in engines] == [1, 2, 3]
    assert all(e.slot.num_gpus == 0.5 for e in engines)


def test_an_engine_may_not_span_nodes_and_tp_must_divide_the_pool():
    with pytest.raises(ValueError, match="rollout engine 0: its 4 bundles span nodes"):
        engine_slots(_pool(2, 2), tp=4, on_gpu=True)
    with pytest.raises(ValueError, match="tensor_parallel_size=3 must divide the rollout pool's 8 bundles"):
        engine_slots(_pool(1, 8), tp=3, on_gpu=True)


def test_colocated_tp_workers_ask_for_the_rollouts_share_of_the_gpu():
    """Colocated with the actor and reference, the rollout holds a third of each GPU: vLLM's TP workers must
    ask Ray for that (VLLM_RAY_PER_WORKER_GPUS), not for vLLM's default of a whole GPU (issue 23 item 1)."""
    engines = engine_slots(_pool(1, 4, gpus=1 / 3), tp=2, on_gpu=True)
    assert [e.tp_worker_gpus for e in engines] == [pytest.approx(1 / 3)] * 2
    assert all(e.slot.num_gpus == 0.0 for e in engines)
    assert [e.tp_worker_gpus for e in engine_slots(_pool(1, 2, gpus=0.5), tp=1, on_gpu=True)] == [0.0, 0.0]
