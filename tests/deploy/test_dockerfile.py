"""deploy/docker/Dockerfile, the manifests' image and rayVersion, and controller/k8s.py name the same versions.

No Docker engine here: the Dockerfile is read as text (its ARG defaults are the pins).
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml

from r1ray.controller import k8s

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
MANIFESTS = sorted((REPO / "deploy" / "kuberay").glob("ray*.yaml"))


def dockerfile_args() -> dict[str, str]:
    args = {}
    for match in re.finditer(r"^ARG\s+([A-Z0-9_]+)=(\"?)([^\"\s]+)\2\s*$", DOCKERFILE.read_text(), re.MULTILINE):
        args[match.group(1)] = match.group(3)
    return args


def images_and_ray_versions(path: Path) -> tuple[set[str], set[str]]:
    images, versions = set(), set()
    for doc in (d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"].startswith("Ray")):
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        versions.add(spec["rayVersion"])
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    return images, versions


def test_dockerfile_pins_every_component():
    args = dockerfile_args()
    for name in ("CUDA_VERSION", "PYTHON_VERSION", "RAY_VERSION", "TORCH_VERSION", "VLLM_VERSION",
                 "FLASH_ATTN_VERSION", "R1RAY_VERSION"):
        assert re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", args.get(name, "")), f"ARG {name} is not pinned: {args}"
    text = DOCKERFILE.read_text()
    assert "FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu24.04" in text
    for pin in ('"torch==${TORCH_VERSION}"', '"vllm==${VLLM_VERSION}"', '"ray[default]==${RAY_VERSION}"',
                '"flash-attn==${FLASH_ATTN_VERSION}"'):
        assert pin in text


def test_k8s_defaults_match_the_dockerfile():
    args = dockerfile_args()
    assert (k8s.RAY_VERSION, k8s.TORCH_VERSION, k8s.VLLM_VERSION, k8s.CUDA_VERSION, k8s.R1RAY_VERSION) == (
        args["RAY_VERSION"], args["TORCH_VERSION"], args["VLLM_VERSION"], args["CUDA_VERSION"], args["R1RAY_VERSION"])
    tag = k8s.DEFAULT_IMAGE.rsplit(":", 1)[1]
    assert tag == (f"{args['R1RAY_VERSION']}-ray{args['RAY_VERSION']}-torch{args['TORCH_VERSION']}"
                   f"-vllm{args['VLLM_VERSION']}-cu{args['CUDA_VERSION']}")
    assert f"-t {k8s.DEFAULT_IMAGE} ." in DOCKERFILE.read_text()  # the build command in its header


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifests_run_the_dockerfile_image_and_its_ray(path):
    images, versions = images_and_ray_versions(path)
    assert images == {k8s.DEFAULT_IMAGE}
    assert versions == {dockerfile_args()["RAY_VERSION"]}


def test_the_image_has_the_ray_and_r1ray_that_submit_to_it():
    """`ray job submit` wants client and cluster on the same Ray; the image builds this checkout's r1ray."""
    args = dockerfile_args()
    assert importlib.metadata.version("r1ray") == args["R1RAY_VERSION"]
    installed = importlib.metadata.version("ray")
    assert installed == args["RAY_VERSION"], f"this machine runs Ray {installed}; the image pins {args['RAY_VERSION']}"


def test_vllm_is_the_one_this_ray_release_pins():
    """Ray pins its tested vLLM in the `llm` extra; vLLM in turn pins torch (checked when the image builds)."""
    args = dockerfile_args()
    requires = importlib.metadata.requires("ray") or []
    pins = [r for r in requires if r.startswith("vllm") and "extra == \"llm\"" in r]
    if importlib.metadata.version("ray") != args["RAY_VERSION"] or not pins:
        pytest.skip("the installed Ray is not the image's, so its vLLM pin says nothing about the image")
    assert re.search(rf"==\s*{re.escape(args['VLLM_VERSION'])}\b", pins[0]), pins
