"""Joining a cluster that is not there fails fast, in one line, instead of Ray's minutes of retries."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1ray.controller.ray_cluster import ClusterUnreachable, wait_for_gcs

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]          # nothing listens once the socket is closed


def test_a_listening_address_passes_at_once() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        start = time.monotonic()
        wait_for_gcs(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=5)
        assert time.monotonic() - start < 1


def test_nothing_listening_fails_after_the_timeout_naming_the_address() -> None:
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(ClusterUnreachable) as info:
        wait_for_gcs(f"127.0.0.1:{port}", timeout_s=1.5)
    assert 1.5 <= time.monotonic() - start < 5
    assert str(info.value).startswith(f"ray.address 127.0.0.1:{port}: nothing accepts connections there")
    wait_for_gcs("auto", timeout_s=0)                     # left to Ray
    wait_for_gcs("ray://head:10001", timeout_s=0)


@pytest.mark.slow        # runs `r1ray train` in a subprocess: the training stack's imports
def test_train_with_an_unreachable_address_exits_with_one_line(tmp_path) -> None:
    port = _closed_port()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "r1ray.controller.cli", "train", "--config", str(REPO / "configs" / "quickstart.yaml"),
         "stages=[]", f"ray.address=127.0.0.1:{port}", "ray.connect_timeout_s=1",
         f"trainer.output_dir={tmp_path / 'out'}", f"model.path={tmp_path / 'model'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: ray.address 127.0.0.1:{port}: nothing accepts connections there (Connection refused) "
                      f"after 1s; start the head (`ray start --head --port {port}`), fix the address, or leave "
                      f"ray.address empty for a local cluster"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 120


@pytest.mark.slow        # runs `r1ray train` in a subprocess: the training stack's imports
def test_a_gpu_pool_on_a_machine_without_gpus_is_refused_before_anything_is_written(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: a GPU pool is placeable here")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "r1ray.train", "--config", str(REPO / "configs" / "quickstart.yaml"),
                           "placement.pools.train.device=gpu", f"trainer.output_dir={out}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**_env_without_ray_address()})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: placement.pools.train.device=gpu: this machine has no CUDA GPU and ray.address is empty (a local "
        "cluster on this machine); set placement.pools.train.device=cpu, or run on a GPU cluster "
        "(ray.address=HOST:PORT, or `ray job submit`)")
    assert not out.exists()


def _env_without_ray_address() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.mark.parametrize(("configured", "env", "message"), [
    ("badhost:abc", None, "ray.address: 'badhost:abc' is not HOST:PORT (port 'abc' is not a number from 1 to 65535)"),
    ("", "headnode", "RAY_ADDRESS: 'headnode' is not HOST:PORT (it has no :PORT)"),
    ("", "10.0.0.1:70000", "RAY_ADDRESS: '10.0.0.1:70000' is not HOST:PORT (port '70000' is not a number"),
])
def test_an_unparsable_cluster_address_names_its_source(monkeypatch, configured, env, message) -> None:
    from r1ray.controller.ray_cluster import check_address

    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(ValueError) as info:
        check_address(configured)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_valid_cluster_addresses_pass(monkeypatch) -> None:
    from r1ray.controller.ray_cluster import check_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for address in ("", "auto", "local", "10.0.0.1:6379", "[::1]:6379", "ray://head:10001", "http://head:8265"):
        check_address(address)
