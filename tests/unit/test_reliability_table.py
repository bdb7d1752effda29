"""docs/reliability.md lists bad inputs with the exact error each gives; the rows that need no cluster
(`r1ray config validate`, `r1ray data validate`, `r1ray score`) are run here and must still say that: the
line on stderr, or for a row that exits 0 (a score that must stay 0) the line on stdout."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from r1ray.controller.cli import main

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (\d+) \| [^|]+ \| `(r1ray (?:config validate|data validate|score) [^`]+)` \| (\d+) \| `(.+)` \|$")


def _rows() -> list[tuple[str, str, int, str]]:
    text = (REPO / "docs" / "reliability.md").read_text()
    rows = [(m.group(1), m.group(2), int(m.group(3)), m.group(4)) for m in map(ROW.match, text.splitlines()) if m]
    assert len(rows) >= 20, "the table's format changed; update ROW"
    return rows


@pytest.mark.parametrize(("number", "command", "code", "line"), _rows(), ids=lambda v: str(v)[:40])
def test_each_documented_bad_input_gives_its_documented_line(number, command, code, line, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            got = main(shlex.split(command)[1:])
        except SystemExit as exc:
            got = exc.code
    assert got == code
    said = (out if code == 0 else err).getvalue()
    assert line in said.splitlines(), said
