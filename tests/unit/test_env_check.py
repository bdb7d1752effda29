"""r1ray.env_check: a torchvision that cannot load beside this torch is named, with the fix, in one line."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from r1ray.controller.cli import EXIT_USAGE, main
from r1ray.env_check import TORCH_COMPANIONS, UNINSTALL, TorchCompanionError, check_torch_companions

REPO = Path(__file__).resolve().parents[2]
NMS_ERROR = "operator torchvision::nms does not exist"


def install_fake(root: Path, name: str, version: str, body: str) -> None:
    """A package `name` with a dist-info, as pip would leave it, whose import runs `body`."""
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(body)
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A folder on this process's sys.path and on the PYTHONPATH its subprocesses get."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_nothing_installed_passes():
    # This environment runs without the three (CI uninstalls them); the check is then a no-op.
    if any(importlib.util.find_spec(name) for name in TORCH_COMPANIONS):
        pytest.skip("a torch companion is installed here")
    check_torch_companions()


def test_a_broken_torchvision_is_named_with_its_version_and_the_fix(site):
    install_fake(site, "torchvision", "0.29.0", f"raise RuntimeError({NMS_ERROR!r})\n")
    with pytest.raises(RuntimeError) as err:
        check_torch_companions()
    message = str(err.value)
    assert isinstance(err.value, TorchCompanionError)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"torchvision 0.29.0 (RuntimeError: {NMS_ERROR})")
    assert f"torch {importlib.metadata.version('torch')}" in message
    assert message.endswith(UNINSTALL) and UNINSTALL == "pip uninstall -y torchvision torchaudio torchcodec"


def test_a_companion_that_imports_is_left_alone(site):
    install_fake(site, "torchaudio", "2.13.0", "")
    check_torch_companions()


def test_every_broken_companion_is_named(site):
    install_fake(site, "torchvision", "0.29.0", f"raise RuntimeError({NMS_ERROR!r})\n")
    install_fake(site, "torchaudio", "2.13.0", "")
    install_fake(site, "torchcodec", "0.14.0", "raise OSError('Could not load this library: libtorchcodec.so')\n")
    with pytest.raises(TorchCompanionError) as err:
        check_torch_companions()
    message = str(err.value)
    assert "torchvision 0.29.0" in message and "torchcodec 0.14.0 (OSError: Could not load" in message
    assert "torchaudio 2.13.0" not in message


def test_the_cli_prints_one_error_line_before_loading_a_model(site, tmp_path, capsys):
    install_fake(site, "torchvision", "0.29.0", f"raise RuntimeError({NMS_ERROR!r})\n")
    code = main(["model", "init-tiny", "--out", str(tmp_path / "tiny")])
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE
    assert err.splitlines() == [err.strip()] and err.startswith("error: torchvision 0.29.0 ")
    assert UNINSTALL in err and "Traceback" not in err
    assert not (tmp_path / "tiny").exists()


def test_commands_that_load_no_model_skip_the_check(site, capsys):
    install_fake(site, "torchvision", "0.29.0", f"raise RuntimeError({NMS_ERROR!r})\n")
    assert main(["config", "validate", "--config", str(REPO / "configs" / "quickstart.yaml")]) == 0
    assert "torchvision" not in capsys.readouterr().err
