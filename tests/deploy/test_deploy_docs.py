"""README.md (deployment sections): its commands name real files and options, and its Python example builds a valid placement."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import r1ray.config_load
from r1ray.controller.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "README.md"
SAMPLE = REPO / "tests" / "data" / "gsm8k_sample.jsonl"
SECTIONS = ("On one machine", "On an existing Ray cluster", "On Kubernetes", "From Python")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.DOTALL)


def commands() -> list[list[str]]:
    """Each r1ray command of the bash blocks, continuation lines joined."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("r1ray "):
                found.append(shlex.split(line))
    return found


def test_every_section_has_a_command():
    text = DOC.read_text()
    for title in SECTIONS:
        section = text.split(f"### {title}", 1)[1].split("\n### ", 1)[0]
        assert "```bash" in section or "```python" in section, title
    for needed in ("ray job submit", "r1ray submit", "r1ray k8s render", "kubectl apply"):
        assert needed in text


def test_r1ray_commands_parse():
    parser = build_parser()
    assert {c[1] for c in commands()} >= {"train", "submit", "k8s"}
    for words in commands():
        args, extra = parser.parse_known_args(words[1:])
        assert all("=" in e for e in extra), words


def test_files_named_in_the_doc_exist():
    for path in set(re.findall(r"(?:deploy|configs)/[\w./-]+\.(?:yaml|md|json)|deploy/docker/Dockerfile", DOC.read_text())):
        assert (REPO / path).exists(), path


def test_python_example_places_roles_as_described(monkeypatch):
    import r1ray.controller.trainer as trainer_module

    made = {}

    class Recorder:
        def __init__(self, cfg, placement=None):
            made.update(cfg=cfg, placement=placement)

        def fit(self):
            return {}

    real = r1ray.config_load.load_config
    monkeypatch.setattr(r1ray.config_load, "load_config",  # the recipe's data lives on the cluster
                        lambda path, overrides=(): real(REPO / path, [*overrides, f"data.train_files=[{SAMPLE}]",
                                                                      f"data.val_files=[{SAMPLE}]"]))
    monkeypatch.setattr(trainer_module, "Trainer", Recorder)
    (example,) = blocks("python")
    exec(compile(example, str(DOC), "exec"), {})
    placement = made["placement"]
    assert placement.sharing("train") == ["actor", "ref"]
    assert placement.pools["gen"].size // made["cfg"].rollout.tensor_parallel_size == 4
    assert placement.pools["cpu"].device == "cpu"
    placement.validate({"GPU": 16, "CPU": 128}, [{"GPU": 8, "CPU": 64}, {"GPU": 8, "CPU": 64}, {"CPU": 16}])
    with pytest.raises(Exception, match="GPU"):
        placement.validate({"GPU": 8, "CPU": 128})
