"""User modules named by the config are imported in a child process before a run: errors in one line with
file and line, no exit code or output of theirs passed on (docs/reliability.md, issue 21 item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1ray.config import AlgorithmConfig, R1RayConfig, RewardConfig
from r1ray.config_load import ConfigError
from r1ray.controller.cli import main
from r1ray.user_code import check_user_code, user_code_paths

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"

MODULES = {
    "good.py": "print('hello from import')\ndef score(r, g, e):\n    return 1.0\nnot_a_function = 3\n",
    "syntax.py": "def score(r, g, e):\n    return 1.0 +\n",
    "raises.py": "import json\nCONFIG = json.loads('{bad')\n",
    "exits.py": "import sys\nsys.exit(3)\n",
    "hard_exit.py": "import os\nos._exit(7)\n",
}


@pytest.fixture()
def user_modules(tmp_path, monkeypatch) -> Path:
    package = tmp_path / "mine"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in MODULES.items():
        (package / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def _cfg(*rewards: str, loss: str = "clipped") -> R1RayConfig:
    return R1RayConfig(reward=RewardConfig(functions=["format", *rewards], weights=[1.0] * (1 + len(rewards))),
                       algorithm=AlgorithmConfig(policy_loss=loss))


def test_the_config_names_its_user_functions() -> None:
    cfg = _cfg("a.b:c", loss="d.e:f")
    assert user_code_paths(cfg) == [("reward.functions", "a.b:c"), ("algorithm.policy_loss", "d.e:f")]
    check_user_code(_cfg())                  # nothing to import: no child process


def test_importable_functions_pass_and_their_output_stays_in_the_child(user_modules, capfd) -> None:
    check_user_code(_cfg("mine.good:score", loss="mine.good:score"))
    assert "hello from import" not in capfd.readouterr().out


@pytest.mark.parametrize(("path", "message"), [
    ("mine.syntax:score", "reward.functions: 'mine.syntax:score' cannot be used: SyntaxError: invalid syntax at "
                          "{pkg}/syntax.py:2;"),
    ("mine.raises:score", "reward.functions: 'mine.raises:score' cannot be used: JSONDecodeError: Expecting property "
                          "name enclosed in double quotes: line 1 column 2 (char 1) at {pkg}/raises.py:2;"),
    ("mine.exits:score", "reward.functions: 'mine.exits:score' cannot be used: the module called sys.exit(3) while "
                         "being imported;"),
    ("mine.good:nope", "reward.functions: 'mine.good:nope' cannot be used: AttributeError: module 'mine.good' has no "
                       "attribute 'nope'"),
    ("mine.good:not_a_function", "reward.functions: 'mine.good:not_a_function' cannot be used: not_a_function is "
                                 "int, not a function;"),
    ("mine.hard_exit:score", "importing mine.hard_exit:score ended the interpreter (exit code 7)"),
])
def test_a_broken_module_is_one_line_naming_field_file_and_line(user_modules, path, message) -> None:
    with pytest.raises(ConfigError) as info:
        check_user_code(_cfg(path))
    text = str(info.value)
    assert text.startswith(message.format(pkg=user_modules)), text
    assert "\n" not in text


def test_config_validate_reports_it_and_exits_2_not_the_modules_code(user_modules, capsys) -> None:
    code = main(["config", "validate", "--config", str(QUICKSTART), "reward.functions=[mine.exits:score]",
                 "reward.weights=[1.0]"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["error: reward.functions: 'mine.exits:score' cannot be used: the module "
                                        "called sys.exit(3) while being imported; fix the module (or its name) and "
                                        "validate again with `r1ray config validate`"]
