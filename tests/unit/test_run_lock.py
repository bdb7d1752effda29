"""One run per output directory (controller/run_lock.py): the lock is taken, released, refused to a second
run while its holder lives, taken over from a holder that is gone, never from another host; and
`r1ray train` into a locked directory ends with one line before anything starts."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from r1ray.controller import run_lock
from r1ray.controller.cli import EXIT_USAGE, main
from r1ray.controller.run_lock import LOCK_FILE, OutputDirInUse, RunLock

REPO = Path(__file__).resolve().parents[2]


def holder(live_pid: int, **fields) -> dict:
    """A lock record as the run of process `live_pid` on this machine writes it, with `fields` changed."""
    record = {"host": socket.gethostname(), "pid": live_pid, "pid_started": psutil.Process(live_pid).create_time(),
              "pid_namespace": run_lock._pid_namespace(), "started": "2024-05-01T10:00:00+00:00",
              "command": "r1ray train --config other.yaml"}
    return {**record, **fields}


def write_lock(out: Path, record: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_FILE).write_text(json.dumps(record))
    return out / LOCK_FILE


@pytest.fixture
def sleeper():
    """A live process that is not this one."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_the_lock_is_taken_for_the_run_and_released_after_it(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a"
    with RunLock(out, command="r1ray train x") as lock:
        record = json.loads((out / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["command"] == "r1ray train x" and record == lock.record
        (out / "metrics.jsonl").write_text("{}\n")
    assert not (out / LOCK_FILE).exists()
    assert (out / "metrics.jsonl").exists()


def test_a_refused_or_empty_run_leaves_no_directory_behind(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a"
    with pytest.raises(RuntimeError, match="boom"), RunLock(out):
        raise RuntimeError("boom")
    assert not (tmp_path / "runs").exists()


def test_the_same_process_may_take_the_lock_again(tmp_path: Path) -> None:
    # A pipeline holds its root; a stage run directly into the root would take it again.
    with RunLock(tmp_path):
        with RunLock(tmp_path):
            assert (tmp_path / LOCK_FILE).exists()
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_second_run_is_refused_with_one_line_naming_the_holder(tmp_path: Path, sleeper) -> None:
    lock = write_lock(tmp_path, holder(sleeper.pid))
    with pytest.raises(OutputDirInUse) as refused:
        RunLock(tmp_path).__enter__()
    message = str(refused.value)
    assert message == (f"trainer.output_dir {tmp_path}: in use by another run (pid {sleeper.pid} on host "
                       f"{socket.gethostname()}, started 2024-05-01T10:00:00+00:00: r1ray train --config other.yaml); "
                       f"wait for it to end or choose another trainer.output_dir")
    assert json.loads(lock.read_text())["pid"] == sleeper.pid        # untouched


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: Path, caplog) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    gone = holder(os.getpid(), pid=finished.pid)
    write_lock(tmp_path, gone)
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a run that is gone (pid {gone['pid']}" in caplog.text


def test_a_reused_pid_does_not_keep_the_lock(tmp_path: Path, sleeper) -> None:
    # The pid lives, but it is a process started at another time than the holder.
    write_lock(tmp_path, holder(sleeper.pid, pid_started=psutil.Process(sleeper.pid).create_time() - 3600))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path: Path) -> None:
    lock = write_lock(tmp_path, holder(os.getpid(), host="node-7", pid=999_999))
    with pytest.raises(OutputDirInUse, match=f"in use by a run on another host .*pid 999999 on host node-7.*; "
                                             f"choose another trainer.output_dir, or if that run is no longer "
                                             f"alive, delete {lock}$"):
        RunLock(tmp_path).__enter__()
    assert lock.exists()


def test_an_unreadable_lock_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(run_lock, "_WRITE_GRACE_S", 0.1)
    (tmp_path / LOCK_FILE).write_text("")
    with pytest.raises(OutputDirInUse, match="is not a readable lock; if no run uses this directory, delete it"):
        RunLock(tmp_path).__enter__()


def test_a_run_killed_while_holding_the_lock_is_taken_over(tmp_path: Path) -> None:
    # A real holder in another process, SIGKILLed: no finally of its own runs.
    code = ("import sys, time; from r1ray.controller.run_lock import RunLock\n"
            "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUse, match=f"pid {child.pid} "):
            RunLock(tmp_path).__enter__()
    finally:
        child.kill()
        child.wait()
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_train_into_a_locked_directory_fails_at_once_with_one_line(tmp_path: Path, sleeper, capsys,
                                                                  monkeypatch) -> None:
    from r1ray.controller import cli_train

    def train(cfg) -> int:
        raise AssertionError("the training stack was started for a locked directory")

    monkeypatch.setattr(cli_train, "_train", train)
    monkeypatch.chdir(REPO)
    write_lock(tmp_path, holder(sleeper.pid))
    code = main(["train", "--config", "configs/quickstart.yaml", f"trainer.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.splitlines() == [f"error: trainer.output_dir {tmp_path}: in use by another run (pid {sleeper.pid} on "
                                f"host {socket.gethostname()}, started 2024-05-01T10:00:00+00:00: r1ray train --config "
                                f"other.yaml); wait for it to end or choose another trainer.output_dir"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]


def test_an_output_directory_that_cannot_be_written_is_one_line(tmp_path) -> None:
    """A read-only place (here /sys, which refuses mkdir even to root) is a user error, not a traceback."""
    import os

    target = Path("/sys/r1ray_run_lock_test")
    try:
        os.mkdir(target)
    except OSError:
        pass
    else:
        os.rmdir(target)
        pytest.skip("/sys accepts new directories here; nothing read-only to try")
    with pytest.raises(ValueError) as info:
        with RunLock(target / "run"):
            pass
    assert str(info.value).startswith(f"trainer.output_dir {target / 'run'}: cannot write there (")
    assert str(info.value).endswith("; choose a directory this user can write to")
