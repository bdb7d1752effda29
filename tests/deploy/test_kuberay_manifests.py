"""deploy/kuberay/: valid against the real KubeRay CRDs, up to date with `r1ray k8s render`, and GRPO-ready."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

import kuberay_schema
from r1ray.controller.k8s import RenderOptions, load_for_cluster, render

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
RECIPE = REPO / "configs" / "r1_zero_qwen2.5_7b_math.yaml"
# How the committed manifests were made (their first line says the same).
RENDERED = {"rayjob-grpo.yaml": RenderOptions(kind="rayjob", name="r1ray-grpo"),
            "raycluster-grpo.yaml": RenderOptions(kind="raycluster", name="r1ray-grpo")}


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def kind(name: str, wanted: str) -> dict:
    return next(d for d in docs(name) if d["kind"] == wanted)


def cluster_specs() -> list[dict]:
    return [kind("rayjob-grpo.yaml", "RayJob")["spec"]["rayClusterSpec"], kind("raycluster-grpo.yaml", "RayCluster")["spec"]]


def pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_manifest_is_valid_against_the_kuberay_crd(name):
    kuberay = kuberay_schema.kuberay_docs(docs(name))
    assert kuberay
    for doc in kuberay:
        assert kuberay_schema.errors(doc) == [], doc["kind"]


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_manifest_is_what_render_makes_of_the_recipe(name):
    fresh = render(RECIPE, (), RENDERED[name]).docs
    command = f"r1ray k8s render --config {RECIPE.relative_to(REPO)} --kind {RENDERED[name].kind} " \
              f"--name r1ray-grpo --out deploy/kuberay/{name}"
    assert docs(name) == fresh, f"deploy/kuberay/{name} is out of date; run: {command}"


def test_head_runs_the_driver_only_and_gpu_workers_ask_for_gpus():
    for spec in cluster_specs():
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
        assert {g["groupName"] for g in gpu_groups} == {"train", "rollout"}
        for group in gpu_groups:
            pod = group["template"]["spec"]
            assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_every_pod_has_a_memory_shm_and_the_shared_claim():
    claim = yaml.safe_load((KUBERAY / "pvc-shared.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for spec in cluster_specs():
        for pod in pods(spec):
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
            assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            assert mounts["/dev/shm"] == "dshm"
            assert {mounts[p] for p in ("/data", "/checkpoints", "/models")} == {"shared"}


def test_token_auth_is_on():
    for spec in cluster_specs():
        assert spec["authOptions"] == {"mode": "token"}


def test_a_retried_job_resumes_and_the_cluster_goes_away_afterwards():
    job = kind("rayjob-grpo.yaml", "RayJob")["spec"]
    assert job["backoffLimit"] >= 1
    assert job["shutdownAfterJobFinishes"] is True
    words = shlex.split(job["entrypoint"])
    assert words[:4] == ["python", "-m", "r1ray.train", "--config"] and "trainer.resume=auto" in words
    # Checkpoints must outlive the pods for that resume to find them.
    cfg, _ = load_for_cluster(RECIPE)
    assert cfg.trainer.output_dir.startswith("/checkpoints/")


def test_the_job_runs_the_recipe_from_its_configmap():
    job = kind("rayjob-grpo.yaml", "RayJob")
    config_map = kind("rayjob-grpo.yaml", "ConfigMap")
    config_path = shlex.split(job["spec"]["entrypoint"])[4]
    directory, file_name = config_path.rsplit("/", 1)
    assert config_map["data"][file_name] == RECIPE.read_text()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


# ---- the validator rejects what the API server would -----------------------------------------------------
def broken(edit) -> dict:
    doc = copy.deepcopy(kind("rayjob-grpo.yaml", "RayJob"))
    edit(doc["spec"]["rayClusterSpec"])
    return doc


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["workerGroupSpecs"][0].update(replicas="two"), "'two' is not of type 'integer'"),
    (lambda s: s["workerGroupSpecs"][0]["rayStartParams"].update({"num-cpus": 64}), "64 is not of type 'string'"),
    (lambda s: s["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required property"),
    (lambda s: s["headGroupSpec"]["template"]["spec"].update(tolerationz=[]), "'tolerationz' was unexpected"),
    (lambda s: s["authOptions"].update(mode="tokens"), "'tokens' is not one of"),
    (lambda s: s["workerGroupSpecs"][0].update(replicas=2 ** 31), "is greater than the maximum"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
        cpu="8 cores"), "does not match"),
], ids=["wrong-type", "rayStartParams-int", "missing-required", "unknown-field", "bad-enum", "int32-range",
        "bad-quantity"])
def test_broken_manifests_fail_validation(edit, message):
    problems = kuberay_schema.errors(broken(edit))
    assert any(message in p for p in problems), problems


def test_quantities_may_be_integers_or_strings():
    doc = broken(lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
                 .update(cpu=64, memory="512Gi"))
    assert kuberay_schema.errors(doc) == []


def test_wrong_kind_and_name_are_caught():
    doc = kind("raycluster-grpo.yaml", "RayCluster")
    assert kuberay_schema.errors({**doc, "apiVersion": "v1"})
    assert kuberay_schema.errors({**doc, "metadata": {"name": "Not_A_Name"}})
