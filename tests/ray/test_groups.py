"""Worker groups and placement on a real local Ray cluster: calls, scatter/gather, the torch.distributed
rendezvous over gloo, placement validation, colocated shares and the startup timeout."""

from __future__ import annotations

import sys
import time

import pytest
import ray
import torch
import torch.distributed as dist
from ray.util.placement_group import remove_placement_group

from r1ray.protocol import PromptBatch, concat_batches
from r1ray.workers.base import TorchWorker, Worker
from r1ray.workers.group import WorkerGroup, WorkerStartupError, setup_groups, start_groups
from r1ray.workers.placement import Placement, PlacementError, ResourcePool

pytestmark = pytest.mark.timeout(120)

# Ray workers cannot import this test module: ship the worker classes below by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class EchoWorker(TorchWorker):
    """A minimal role: reports who it is, transforms its share of a batch, joins collectives."""

    def __init__(self, role: str, rank: int, world_size: int, tag: str):
        super().__init__(role, rank, world_size)
        self.tag = tag

    def describe(self, suffix: str) -> str:
        return f"{self.tag}:{self.rank}/{self.world_size}:{suffix}"

    def mark(self, batch: PromptBatch, *, offset: int) -> PromptBatch:
        """Tag each row with this rank and shift its index, so the test sees which rank had which row."""
        return PromptBatch(prompt_ids=batch.prompt_ids, ground_truths=batch.ground_truths,
                           data_sources=[f"rank{self.rank}"] * len(batch), extra_infos=batch.extra_infos,
                           indices=[i + offset for i in batch.indices])

    def sum_of_ranks(self) -> tuple[str, float]:
        value = torch.tensor([float(self.rank + 1)])
        dist.all_reduce(value)
        return dist.get_backend(), float(value)


class SlowSetupWorker(Worker):
    """Starts at once; its `setup` (where an engine would wait for a placement it cannot get) never ends."""

    def setup(self) -> None:
        time.sleep(600)


class SlowWorker(Worker):
    def __init__(self, role: str, rank: int, world_size: int, delay_s: float):
        super().__init__(role, rank, world_size)
        time.sleep(delay_s)


@ray.remote
class Holder:
    """Holds the CPUs it was created with until killed."""

    def ping(self) -> bool:
        return True


class TimedWorker(Worker):
    """Takes `delay_s` to construct and says when its constructor ran (wall clock, one machine)."""

    def __init__(self, role: str, rank: int, world_size: int, delay_s: float):
        super().__init__(role, rank, world_size)
        self.started = time.time()
        time.sleep(delay_s)
        self.ended = time.time()

    def window(self) -> tuple[float, float]:
        return self.started, self.ended


def _slots(pool_name: str, role: str, size: int, cpus: float = 0.5):
    placement = Placement(pools={pool_name: ResourcePool(devices_per_node=size, cpus_per_bundle=cpus)},
                          roles={role: pool_name}, threads_per_worker=1)
    return placement.create(timeout_s=60)[role]


def _release(slots) -> None:
    for group in {id(s.placement_group): s.placement_group for s in slots}.values():
        remove_placement_group(group)


@pytest.fixture(scope="module")
def echo_group(ray_cluster):
    slots = _slots("echo", "actor", 2)
    group = WorkerGroup("actor", EchoWorker, slots, startup_timeout_s=60, collective_timeout_s=60, distributed=True,
                        init_kwargs={"tag": "echo"})
    yield group
    group.shutdown()
    group.kill()
    _release(slots)


def test_ping_call_and_call_async(echo_group):
    assert echo_group.world_size == 2
    assert echo_group.ping() == ["actor:0", "actor:1"]
    assert echo_group._call("describe", "x") == ["echo:0/2:x", "echo:1/2:x"]
    refs = echo_group._call_async("describe", suffix="y")
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == ["echo:0/2:y", "echo:1/2:y"]
    assert ray.get(echo_group._call_rank0_async("describe", "z")) == "echo:0/2:z"


def test_scatter_and_gather_keep_row_order(echo_group):
    batch = PromptBatch(prompt_ids=[[i] * (i + 1) for i in range(6)], ground_truths=[str(i) for i in range(6)],
                        data_sources=["src"] * 6, extra_infos=[{"i": i} for i in range(6)], indices=list(range(6)))
    out = concat_batches(ray.get(echo_group._scatter_async("mark", batch, offset=100)))
    assert out.indices == [100 + i for i in range(6)]
    assert out.prompt_ids == batch.prompt_ids
    assert out.extra_infos == batch.extra_infos
    # Contiguous chunks: the first half went to rank 0, the second half to rank 1.
    assert out.data_sources == ["rank0"] * 3 + ["rank1"] * 3


def test_uneven_scatter_allows_short_parts(echo_group):
    batch = PromptBatch(prompt_ids=[[1], [2], [3]], ground_truths=["a", "b", "c"], data_sources=["s"] * 3,
                        extra_infos=[{}, {}, {}], indices=[0, 1, 2])
    with pytest.raises(ValueError, match="3 sequences into 2"):
        echo_group._scatter_async("mark", batch, offset=0)
    out = concat_batches(ray.get(echo_group._scatter_async("mark", batch, even=False, offset=0)))
    assert out.data_sources == ["rank0", "rank0", "rank1"]


def test_rendezvous_all_reduce_over_gloo(echo_group):
    assert echo_group._call("sum_of_ranks") == [("gloo", 3.0), ("gloo", 3.0)]
    # R1RAY_LOOPBACK reached the workers through the job's runtime_env: rendezvous stays on 127.0.0.1.
    host, port = echo_group.address()
    assert host == "127.0.0.1" and port > 0


def test_validate_names_short_resource_without_a_cluster():
    placement = Placement(pools={"train": ResourcePool(nodes=2, devices_per_node=4, device="gpu", cpus_per_bundle=2),
                                 "cpu": ResourcePool(devices_per_node=4)},
                          roles={"actor": "train", "ref": "train", "rollout": "train", "reward": "cpu"})
    assert placement.required() == {"GPU": 8.0, "CPU": 20.0}
    with pytest.raises(PlacementError, match=r"GPU: placement needs 8, cluster has 4 \(short by 4\)") as err:
        placement.validate({"CPU": 64.0, "GPU": 4.0})
    assert "CPU" not in str(err.value)
    # Enough GPUs in total, but not 4 of them on each of two nodes.
    with pytest.raises(PlacementError, match=r"pool 'train' needs 2 node\(s\) with \{CPU: 8, GPU: 4\} each, "
                                             r"only 1 node\(s\) have that much; the cluster's nodes: "
                                             r"1 x \{CPU: 32, GPU: 6\}, 1 x \{CPU: 32, GPU: 2\}$"):
        placement.validate({"CPU": 64.0, "GPU": 8.0}, nodes=[{"CPU": 32.0, "GPU": 6.0}, {"CPU": 32.0, "GPU": 2.0}])
    placement.validate({"CPU": 64.0, "GPU": 8.0}, nodes=[{"CPU": 32.0, "GPU": 4.0}, {"CPU": 32.0, "GPU": 4.0}])


def test_validate_rejects_undefined_pool():
    placement = Placement(pools={"train": ResourcePool()}, roles={"actor": "train", "rollout": "gen"})
    with pytest.raises(PlacementError, match="role 'rollout' maps to undefined pool 'gen'"):
        placement.validate({"CPU": 8.0})


def test_create_refuses_a_placement_larger_than_the_cluster(ray_cluster):
    placement = Placement(pools={"huge": ResourcePool(devices_per_node=64)}, roles={"actor": "huge"})
    with pytest.raises(PlacementError, match=r"CPU: placement needs 64, cluster has 4 \(short by 60\)"):
        placement.create(timeout_s=5)


def test_a_placement_that_does_not_become_ready_reserves_nothing_and_can_be_made_again(new_placement_groups):
    """Another actor holds all but half a CPU: the placement's first pool is placed, its second cannot be within
    the timeout. The refusal removes both pools' groups (a pending one would take the CPUs as soon as they free
    up, and a restart creates the groups again under the same names); once the CPUs are free, the same
    placement is made."""
    holder = Holder.options(num_cpus=ray.available_resources()["CPU"] - 0.5).remote()
    ray.get(holder.ping.remote())
    placement = Placement(pools={"a_fits": ResourcePool(cpus_per_bundle=0.5),
                                 "b_held": ResourcePool(devices_per_node=2, cpus_per_bundle=0.5)},
                          roles={"rollout": "a_fits", "actor": "b_held"}, threads_per_worker=1)
    try:
        with pytest.raises(PlacementError, match=r"^pool 'b_held': only 0 of 1 placement groups became ready within 2s"):
            placement.create(timeout_s=2)
        assert new_placement_groups() == []
    finally:
        ray.kill(holder)
    slots = placement.create(timeout_s=60)
    assert new_placement_groups() == ["r1ray-a_fits-0", "r1ray-b_held-0"]
    _release([s for role_slots in slots.values() for s in role_slots])


def test_colocated_roles_get_fractional_shares(ray_cluster):
    placement = Placement(pools={"coloc": ResourcePool(devices_per_node=2, cpus_per_bundle=0.5),
                                 "alone": ResourcePool(devices_per_node=1, cpus_per_bundle=0.5)},
                          roles={"actor": "coloc", "ref": "coloc", "rollout": "coloc", "reward": "alone"})
    slots = placement.create(timeout_s=60)
    try:
        for role in ("actor", "ref", "rollout"):
            assert [s.rank for s in slots[role]] == [0, 1]
            assert all(s.num_cpus == pytest.approx(0.5 / 3) and s.num_gpus == 0.0 for s in slots[role]), role
        assert slots["reward"][0].num_cpus == pytest.approx(0.5)
        # Colocated roles share the same bundles of the same placement group; the other pool has its own.
        bundles = {role: [(s.placement_group.id, s.bundle_index) for s in slots[role]] for role in slots}
        assert bundles["actor"] == bundles["ref"] == bundles["rollout"]
        assert len({pg for pg, _ in bundles["actor"]}) == 1
        assert bundles["reward"][0][0] != bundles["actor"][0][0]
    finally:
        _release([s for role_slots in slots.values() for s in role_slots])


def test_startup_timeout_names_the_role(ray_cluster):
    slots = _slots("slow", "reward", 1)
    try:
        started = time.monotonic()
        with pytest.raises(WorkerStartupError, match=r"role 'reward': ranks \[0\] did not finish ping within 2s"):
            WorkerGroup("reward", SlowWorker, slots, startup_timeout_s=2, collective_timeout_s=60, distributed=False,
                        init_kwargs={"delay_s": 60})
        assert time.monotonic() - started < 30
    finally:
        _release(slots)


def test_groups_start_together_and_a_late_one_stops_them_all(ray_cluster):
    """`start_groups`: the workers of several groups start at the same time (the constructors of two groups'
    workers, 8 s each, run at overlapping times rather than one after the other); when one group is late,
    the line names it and the other group's workers are stopped with it."""
    slots = {role: _slots(f"start_{role}", role, 1, cpus=0.25) for role in ("actor", "rollout", "reward")}
    try:
        groups = [WorkerGroup(role, TimedWorker, slots[role], startup_timeout_s=60, collective_timeout_s=60,
                              distributed=False, init_kwargs={"delay_s": 8}, wait=False) for role in ("actor", "rollout")]
        assert all(g.starting is not None for g in groups)
        start_groups(groups)
        assert all(g.starting is None for g in groups)
        (first_start, first_end), (second_start, second_end) = [ray.get(g.workers[0].window.remote()) for g in groups]
        assert max(first_start, second_start) < min(first_end, second_end)      # the constructors overlapped
        for group in groups:
            group.kill()

        fast = WorkerGroup("rollout", SlowWorker, slots["rollout"], startup_timeout_s=60, collective_timeout_s=60,
                           distributed=False, init_kwargs={"delay_s": 0}, wait=False)
        late = WorkerGroup("reward", SlowWorker, slots["reward"], startup_timeout_s=2, collective_timeout_s=60,
                           distributed=False, init_kwargs={"delay_s": 60}, wait=False)
        with pytest.raises(WorkerStartupError, match=r"^role 'reward': ranks \[0\] did not finish ping within 2s \("):
            start_groups([fast, late])
        # Stopped with the late group (`ray.kill` lands asynchronously: a call may still get through first).
        deadline = time.monotonic() + 30
        while True:
            try:
                ray.get(fast.workers[0].ping.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                break
            assert time.monotonic() < deadline, "the group that started was left running"
            time.sleep(0.5)
    finally:
        _release([s for role_slots in slots.values() for s in role_slots])


def test_an_engine_setup_that_never_ends_fails_at_the_startup_deadline(ray_cluster):
    """issue 23 item 1: an engine waiting for a placement it cannot get used to hang the run forever."""
    slots = _slots("hung", "rollout", 1)
    group = WorkerGroup("rollout", SlowSetupWorker, slots, startup_timeout_s=60, collective_timeout_s=60,
                        distributed=False)
    try:
        started = time.monotonic()
        with pytest.raises(WorkerStartupError, match=r"^role 'rollout' rank 0 did not finish setup within 2s "
                                                     r"\(trainer.startup_timeout_s\)"):
            setup_groups([group], timeout_s=2)
        assert time.monotonic() - started < 30
    finally:
        group.kill()
        _release(slots)
