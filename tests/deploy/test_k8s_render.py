"""`r1ray k8s render`: worker groups follow the placement, and the output passes the KubeRay CRD."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import yaml

import kuberay_schema
from r1ray.config_load import load_config
from r1ray.config_load import ConfigError
from r1ray.controller.cli import main
from r1ray.controller.k8s import RenderError, RenderOptions, render

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "gsm8k_sample.jsonl"

# A GPU recipe of the usual shape: actor + reference on two 8-GPU nodes, vLLM engines on a third, reward on CPUs.
GPU_CONFIG = f"""
model: {{path: Qwen/Qwen2.5-7B, dtype: bfloat16, max_model_len: 32768}}
data: {{train_files: [{SAMPLE}], val_files: [{SAMPLE}], prompts_per_step: 64}}
rollout: {{engine: vllm, n: 16, max_prompt_length: 1024, max_response_length: 8192, tensor_parallel_size: 2}}
actor: {{micro_batch_tokens: 16384, gradient_checkpointing: true}}   # without it, 7B at 9k tokens does not fit
placement:
  pools:
    train: {{nodes: 2, devices_per_node: 8, device: gpu, cpus_per_bundle: 4}}
    gen: {{nodes: 1, devices_per_node: 8, device: gpu, cpus_per_bundle: 4}}
    cpu: {{nodes: 1, devices_per_node: 4, device: cpu, cpus_per_bundle: 2}}
    spare: {{nodes: 3, devices_per_node: 8, device: gpu}}
  actor: train
  ref: train
  rollout: gen
  reward: cpu
trainer: {{output_dir: /checkpoints/qwen7b, save_every: 20}}
logging: {{wandb: false}}
"""


@pytest.fixture
def gpu_config(tmp_path) -> Path:
    path = tmp_path / "grpo_gpu.yaml"
    path.write_text(GPU_CONFIG)
    return path


def job_of(rendered) -> dict:
    return next(d for d in rendered.docs if d["kind"] == "RayJob")


def groups(doc: dict) -> dict[str, dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def limits(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_gpu_recipe_gets_one_worker_group_per_used_pool(gpu_config):
    rendered = render(gpu_config)
    job = job_of(rendered)
    assert kuberay_schema.errors(job) == []
    found = groups(job)
    assert list(found) == ["train", "gen", "cpu"]  # 'spare' is used by no role
    train, gen, cpu = found["train"], found["gen"], found["cpu"]
    assert (train["replicas"], train["minReplicas"], train["maxReplicas"]) == (2, 2, 2)
    assert limits(train)["nvidia.com/gpu"] == 8 and limits(train)["cpu"] == "32"
    assert train["rayStartParams"] == {"num-cpus": "32", "num-gpus": "8"}
    assert gen["replicas"] == 1 and limits(gen)["nvidia.com/gpu"] == 8
    assert cpu["replicas"] == 1 and "nvidia.com/gpu" not in limits(cpu) and limits(cpu)["cpu"] == "8"
    assert "tolerations" not in cpu["template"]["spec"]
    assert shlex.split(job["spec"]["entrypoint"]) == ["python", "-m", "r1ray.train", "--config",
                                                      "/etc/r1ray/grpo_gpu.yaml", "trainer.resume=auto"]


def test_gpus_per_node_gives_pods_whole_nodes_but_never_fewer_than_a_pool_packs(gpu_config):
    job = job_of(render(gpu_config, (), RenderOptions(gpus_per_node=8, image="registry.example/r1ray:dev")))
    assert limits(groups(job)["gen"])["nvidia.com/gpu"] == 8
    assert groups(job)["gen"]["template"]["spec"]["containers"][0]["image"] == "registry.example/r1ray:dev"
    with pytest.raises(RenderError, match="packs 8 GPUs onto one node"):
        render(gpu_config, (), RenderOptions(gpus_per_node=4))


def test_overrides_reach_both_the_placement_and_the_entrypoint(gpu_config):
    job = job_of(render(gpu_config, ["placement.pools.train.nodes=4", "trainer.resume=never"]))
    assert groups(job)["train"]["replicas"] == 4
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[-2:] == ["placement.pools.train.nodes=4", "trainer.resume=never"]  # the user's choice stays


def test_quickstart_renders_cpu_only_groups():
    quickstart = REPO / "configs" / "quickstart.yaml"
    (cluster,) = render(quickstart, (), RenderOptions(kind="raycluster")).docs
    assert kuberay_schema.errors(cluster) == []
    placement = load_config(quickstart).placement
    pools = placement.pools
    found = groups(cluster)
    assert set(found) == {placement.actor, placement.ref, placement.rollout, placement.reward}
    for name, group in found.items():
        assert limits(group)["cpu"] == str(math.ceil(pools[name].cpus_per_bundle * pools[name].devices_per_node))
        assert "nvidia.com/gpu" not in limits(group) and "tolerations" not in group["template"]["spec"]


def test_files_that_live_on_the_cluster_are_warnings_not_errors(gpu_config):
    rendered = render(gpu_config, ["data.train_files=[/data/math/train.parquet]"])
    assert any("/data/math/train.parquet" in w and "must exist on the cluster" in w for w in rendered.warnings)
    assert kuberay_schema.errors(job_of(rendered)) == []


def test_other_config_mistakes_still_fail(gpu_config):
    with pytest.raises(ConfigError, match="did you mean"):
        render(gpu_config, ["trainer.total_stepz=3"])
    with pytest.raises(ConfigError, match="rollout.n"):
        render(gpu_config, ["data.train_files=[/data/x.parquet]", "rollout.n=1"])


def test_outputs_off_the_shared_volume_are_flagged(gpu_config):
    notes = render(gpu_config, ["trainer.output_dir=/tmp/run", "trainer.save_every=0"]).warnings
    assert any("trainer.output_dir: /tmp/run is not on the shared volume" in n for n in notes)
    assert any("save_every=0" in n for n in notes)
    assert not [n for n in render(gpu_config).warnings if "output_dir" in n]


def test_pools_of_different_shapes_are_flagged(gpu_config):
    notes = render(gpu_config).warnings
    assert any("pool 'cpu' also fits on a pod of group 'train'" in n for n in notes)
    assert not any("pool 'gen'" in n for n in notes)  # gen and train pods have the same shape


def test_bad_names_are_refused(gpu_config):
    with pytest.raises(RenderError, match="--name"):
        render(gpu_config, (), RenderOptions(name="Bad_Name"))
    assert job_of(render(gpu_config))["metadata"]["name"] == "r1ray-grpo-gpu"


def test_cli_writes_a_valid_file_and_reports_warnings(gpu_config, tmp_path, capsys):
    out = tmp_path / "rayjob.yaml"
    code = main(["k8s", "render", "--config", str(gpu_config), "--gpus-per-node", "8", "--out", str(out),
                 "trainer.output_dir=/tmp/elsewhere"])
    captured = capsys.readouterr()
    assert code == 0 and f"kubectl apply -f {out}" in captured.out
    assert "warning: trainer.output_dir: /tmp/elsewhere" in captured.err
    text = out.read_text()
    assert text.startswith("# Generated by `r1ray k8s render --config")
    rendered = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in rendered] == ["ConfigMap", "RayJob"]
    assert kuberay_schema.errors(rendered[1]) == []
    assert rendered[0]["data"]["grpo_gpu.yaml"] == GPU_CONFIG


def test_cli_errors_are_one_line(gpu_config, capsys):
    assert main(["k8s", "render", "--config", str(gpu_config), "--gpus-per-node", "2"]) == 2
    assert "error: --gpus-per-node 2" in capsys.readouterr().err
