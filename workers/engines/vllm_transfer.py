"""r1ray's weight-transfer backend for vLLM ("r1ray"), registered with vLLM's WeightTransferEngineFactory.

vLLM 0.32 receives weights through its own API: `LLM.init_weight_transfer_engine`, then per update
`start_weight_update` / `update_weights` / `finish_weight_update`, each a collective RPC into every worker
process of the engine, where the backend named by `weight_transfer_config.backend` does the work. None of
vLLM's own backends runs on CPU (nccl, ipc and the rest need CUDA), so r1ray registers one whose
transport is r1ray's `SyncGroup`: gloo on CPU, NCCL on GPU, the same buckets, deadlines and per-tensor
fingerprints as the HF engine's path. CI therefore runs the phases a cluster runs.

Registration has to happen inside vLLM's worker processes (they are spawned, so a registration in the
Ray actor never reaches them). vLLM imports the module named by `worker_extension_cls` in each worker
before building it, so registering at import time here, beside `R1RayWorkerExtension`, is enough.

Only primitives cross into the workers: vLLM sends RPC arguments as msgpack, which turns a dataclass into
a dict and a tuple into a list, and rebuilds neither a tensor nor a SyncGroupSpec.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from vllm.distributed.weight_transfer import WeightTransferEngine, WeightTransferEngineFactory
from vllm.distributed.weight_transfer.base import WeightTransferInitInfo, WeightTransferUpdateInfo

from r1ray.workers.fingerprint import Fingerprints, WeightSyncError
from r1ray.workers.weight_sync import SyncGroup, SyncGroupSpec, device_uuid

logger = logging.getLogger(__name__)

BACKEND = "r1ray"


@dataclass
class R1RayInitInfo(WeightTransferInitInfo):
    # Per TP worker of the engine: {"spec": SyncGroupSpec.to_dict(), "rank": its sync rank}; one shared group
    # (ranks 1 + engine index x TP + TP rank) or one colocated "ipc" pair per worker (rank 1 each).
    members: list[dict[str, Any]]


@dataclass
class R1RayUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]              # the manifest, in send order, as three parallel lists
    shapes: list[list[int]]
    dtypes: list[str]             # "bfloat16", ... (`r1ray.models.DTYPES` names)

    def __post_init__(self):
        if not len(self.names) == len(self.shapes) == len(self.dtypes):
            raise ValueError(f"r1ray weight update: {len(self.names)} names, {len(self.shapes)} shapes and "
                             f"{len(self.dtypes)} dtypes; the manifest lists must be parallel")


class R1RayTransferEngine(WeightTransferEngine[R1RayInitInfo, R1RayUpdateInfo]):
    """Receives the actor's full weights by bucketed broadcast and loads them with vLLM's layerwise reload,
    which re-runs each layer's post-load processing (fused q/k/v and gate/up, TP sharding, and on CPU the
    prepacked GEMM weights, which a plain in-place `load_weights` would leave stale)."""

    init_info_cls = R1RayInitInfo
    update_info_cls = R1RayUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: SyncGroup | None = None
        self.last_fingerprints: list[list[int]] | None = None
        self.last_unloaded: list[str] = []           # layers that received no tensor in the last update

    def init_transfer_engine(self, init_info: R1RayInitInfo) -> None:
        p = self.parallel_config
        member = init_info.members[p.rank]
        self.group = SyncGroup(SyncGroupSpec.from_dict(member["spec"]), member["rank"], self.device)
        logger.info("vLLM worker %d joined the weight-sync group as rank %d (%s)", p.rank, member["rank"],
                    member["spec"]["backend"])

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: R1RayUpdateInfo) -> None:
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        if self.group is None:
            raise WeightSyncError("r1ray weight transfer: update before init_weight_transfer_engine")
        manifest = [(n, tuple(s), d) for n, s, d in zip(update_info.names, update_info.shapes, update_info.dtypes)]
        prints = Fingerprints(len(manifest), self.device)
        stream = self.group.receive(manifest, prints)
        with disable_mtp_completeness_check():
            self.model.load_weights(stream)
        # Every bucket must be received even if the loader skipped names, or the group falls out of step.
        for _ in stream:
            pass
        self.last_fingerprints = prints.tolist()

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        # vLLM's layerwise reload puts the old tensors of a layer that received nothing back with only a
        # warning ("Failed to load weights"): the engine would sample with a mix of old and new weights while
        # the fingerprints of what arrived all match. Recorded here, raised by the engine once vLLM has
        # closed the update (raising inside it would leave vLLM's update open, refusing the next one).
        self.last_unloaded = self._layers_that_loaded_nothing()
        finalize_layerwise_reload(self.model, self.model_config)
        self._refresh_tied_head()

    def _layers_that_loaded_nothing(self) -> list[str]:
        """Layers with parameters of their own that received none in this update (read before finalize
        resets it). Left out: a tied output head (its weight is the embedding's and never arrives on its
        own), attention layers (their processing is deferred, and their scales are optional) and layers with
        buffers only (rotary caches, which no checkpoint holds)."""
        from vllm.model_executor.layers.attention import is_deferred_attention_layer
        from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info

        tied = getattr(self.model_config.hf_config, "tie_word_embeddings", False)
        head = getattr(self.model, "lm_head", None)
        unloaded = []
        for name, layer in self.model.named_modules():
            if (tied and layer is head) or is_deferred_attention_layer(layer) or not any(
                    True for _ in layer.parameters(recurse=False)):
                continue
            info = get_layerwise_info(layer)
            if info.can_load() and info.load_numel_total and info.load_numel == 0:
                unloaded.append(name)
        return unloaded

    def _refresh_tied_head(self) -> None:
        """A tied output head receives no tensor of its own (its weight is the embedding's), so the
        reload never re-processes it; on CPU that layer keeps a GEMM handle prepacked from the old
        embedding. Re-run its post-load processing over the (updated in place) shared weight."""
        head = getattr(self.model, "lm_head", None)
        if getattr(self.model_config.hf_config, "tie_word_embeddings", False) and hasattr(head, "quant_method"):
            head.quant_method.process_weights_after_loading(head)

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


if BACKEND not in WeightTransferEngineFactory._registry:
    WeightTransferEngineFactory.register_engine(BACKEND, R1RayTransferEngine)


class R1RayWorkerExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); `self` is the vLLM worker. Method names
    carry the r1ray_ prefix because vLLM refuses an extension that shadows a worker attribute."""

    def r1ray_sync_fingerprints(self) -> list[list[int]] | None:
        """The fingerprint table of the tensors this worker received in the last update."""
        return self.weight_transfer_engine.last_fingerprints

    def r1ray_device_uuid(self) -> str:
        """This worker's GPU UUID ("" on CPU). Under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES TP rank t
        takes the t-th of the engine's GPUs, which need not be the GPU of the t-th bundle."""
        return device_uuid(self.device)

    def r1ray_unloaded_layers(self) -> list[str]:
        """The layers with parameters that received no tensor in the last update."""
        return self.weight_transfer_engine.last_unloaded
