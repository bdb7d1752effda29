"""Weight sync from 2 FSDP2 actor ranks to an HF rollout engine over a real gloo group: the engine ends
up with the actor's full weights bit for bit, and a damaged engine weight is caught by
the per-tensor fingerprints."""

from __future__ import annotations

import pytest
import ray
import torch

from r1ray.workers.fingerprint import WeightSyncError, verify_fingerprints
from r1ray.workers.weight_sync import bucket_plan

pytestmark = pytest.mark.timeout(300)


def test_bucket_plan_groups_consecutive_same_dtype_up_to_the_budget():
    manifest = [
        ("a", (4, 4), "float32"),            # 64 bytes
        ("b", (8,), "float32"),              # 32
        ("c", (8,), "float32"),              # 32 -> would make 128 > 100: new bucket
        ("d", (100,), "float32"),            # 400: larger than a bucket, alone
        ("e", (4,), "float32"),              # 16
        ("f", (4,), "bfloat16"),             # 8, other dtype: new bucket
        ("g", (4,), "bfloat16"),             # 8
        ("h", (2,), "float32"),              # dtype changes back: new bucket
    ]
    assert bucket_plan(manifest, bucket_bytes=100) == [[0, 1], [2], [3], [4], [5, 6], [7]]
    assert bucket_plan(manifest, bucket_bytes=1 << 20) == [[0, 1, 2, 3, 4], [5, 6], [7]]
    assert bucket_plan([], bucket_bytes=100) == []


def test_the_update_changed_the_actor(actor_rollout):
    """The sync tests below are only meaningful if the actor's weights moved away from the rollout's."""
    changed = [n for n in actor_rollout.updated if not torch.equal(actor_rollout.updated[n], actor_rollout.initial[n])]
    assert len(changed) == len(actor_rollout.updated)
    assert all(m["actor/grad_norm"] > 0 for m in actor_rollout.update_metrics)


def test_sync_gives_the_rollout_engine_the_actors_weights_bit_for_bit(actor_rollout):
    ar = actor_rollout
    names = [name for name, _, _ in ar.manifest]
    assert len(bucket_plan(ar.manifest, ar.bucket_bytes)) > 3   # really bucketed
    sent, received = ar.sync()
    verify_fingerprints(names, sent, received, ["rollout engine 0 worker 0"])
    engine = ray.get(ar.rollout.workers[0].weights.remote())
    actor = ar.actor.full_weights()
    assert sorted(engine) == sorted(names)
    for name in names:
        assert engine[name].dtype == actor[name].dtype == torch.float32, name
        assert torch.equal(engine[name], actor[name]), name
    # Tied input/output embeddings travel once and stay tied in the engine.
    assert "lm_head.weight" not in names
    assert torch.equal(actor["lm_head.weight"], engine["model.embed_tokens.weight"])
    # Colocated "ipc" pairs are matched by GPU UUID (controller/roles.py ipc_pairs); off CUDA there is none.
    assert ar.actor.device_uuids() == ["", ""] and ar.rollout.device_uuids() == [[""]]


def test_a_wrong_receiver_table_fails_naming_the_engine_and_tensor(actor_rollout):
    ar = actor_rollout
    names = [name for name, _, _ in ar.manifest]
    sent, received = ar.sync()
    verify_fingerprints(names, sent, received + received, ["engine 0", "engine 1"])
    damaged = [list(row) for row in received[0]]
    damaged[3][1] += 1
    with pytest.raises(WeightSyncError, match=rf"engine 1 holds 1 tensor\(s\) that differ from the actor's: {names[3]}"):
        verify_fingerprints(names, sent, [received[0], damaged], ["engine 0", "engine 1"])
    with pytest.raises(WeightSyncError, match="engine 0 reported 2 tensors"):
        verify_fingerprints(names, sent, [received[0][:2]], ["engine 0"])


def test_a_damaged_engine_weight_changes_its_fingerprint_and_a_sync_repairs_it(actor_rollout):
    ar = actor_rollout
    names = [name for name, _, _ in ar.manifest]
    sent, received = ar.sync()
    assert received == [sent]
    # Damage one element of one tensor in the middle of the model, inside the live engine: every
    # tensor is fingerprinted, so exactly that one is named.
    index = len(names) // 2
    ray.get(ar.rollout.workers[0].perturb.remote(names[index]))
    held = ray.get(ar.rollout.workers[0].held_fingerprints.remote(ar.manifest))
    with pytest.raises(WeightSyncError, match=rf"holds 1 tensor\(s\) that differ from the actor's: {names[index]}$"):
        verify_fingerprints(names, sent, [held], ["rollout engine 0 worker 0"])
    # The next sync overwrites the damage.
    sent_again, received_again = ar.sync()
    assert sent_again == sent and received_again == [sent]
    assert torch.equal(ray.get(ar.rollout.workers[0].weights.remote())[names[index]], ar.updated[names[index]])


@ray.remote(num_cpus=0.25)
def _ipc_receiver(spec_dict: dict, manifest: list, rounds: int) -> list:
    """A receiver in another process: joins the "ipc" pair, receives `rounds` syncs, returns them."""
    from r1ray.workers.fingerprint import Fingerprints
    from r1ray.workers.weight_sync import SyncGroup, SyncGroupSpec

    group = SyncGroup(SyncGroupSpec.from_dict(spec_dict), 1, torch.device("cpu"))
    out = []
    for _ in range(rounds):
        prints = Fingerprints(len(manifest), torch.device("cpu"))
        tensors = {name: t.clone() for name, t in group.receive(manifest, prints)}
        out.append((tensors, prints.tolist()))
    return out


def test_ipc_pair_shares_buckets_through_host_memory_across_processes(ray_cluster):
    """The colocated transport on CPU: bucket handles through the store, data through shared memory, the
    receiver's copy acknowledged; bit-exact over several syncs on one group, weights left untouched."""
    import threading

    from r1ray.workers.base import free_port
    from r1ray.workers.weight_sync import SyncGroup, SyncGroupSpec

    torch.manual_seed(0)
    weights = [(f"w{i}", torch.randn(64, 33)) for i in range(5)] + [("b", torch.randn(7))]
    manifest = [(n, tuple(t.shape), "float32") for n, t in weights]
    spec = SyncGroupSpec(master_addr="127.0.0.1", master_port=free_port(), world_size=2, backend="ipc",
                         timeout_s=60, bucket_bytes=64 * 33 * 4 * 2)        # two weights per bucket
    assert len(bucket_plan(manifest, spec.bucket_bytes)) == 3
    received = _ipc_receiver.remote(spec.to_dict(), manifest, 2)
    sent = []

    def sender():
        group = SyncGroup(spec, 0, torch.device("cpu"))
        for k in range(2):
            # Round 0 sends the weight tensors themselves: the one-weight bucket ("b") must be copied
            # into its own shared storage, not move the weight's storage into shared memory.
            sent.append(group.send(manifest, weights if k == 0 else [(n, t * (k + 1)) for n, t in weights]))

    thread = threading.Thread(target=sender)
    thread.start()
    rounds = ray.get(received, timeout=120)
    thread.join(timeout=60)
    names = [n for n, _, _ in manifest]
    for k, (tensors, prints) in enumerate(rounds):
        verify_fingerprints(names, sent[k], [prints], ["receiver"])
        for name, tensor in weights:
            assert torch.equal(tensors[name], tensor * (k + 1)), (k, name)
    assert not any(t.is_shared() for _, t in weights)                       # the sender's weights stay private
