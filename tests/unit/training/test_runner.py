"""The runner with stand-in interpreters (tiny shell scripts): streaming, failure tail, timeout."""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from include.mlops.errors import PlacementError, SettingsError, TrainingFailed
from include.mlops.training import runner
from include.mlops.training.config import TrainConfig


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _config(tmp_path: Path) -> TrainConfig:
    return TrainConfig(
        data_path=str(tmp_path / "b.parquet"), output_dir=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ck")
    )


def test_training_python_prefers_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    py = _script(tmp_path / "python", "exit 0\n")
    monkeypatch.setenv("MLOPS_TRAIN_PYTHON", py)
    assert runner.training_python() == py
    monkeypatch.setenv("MLOPS_TRAIN_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=r"MLOPS_TRAIN_PYTHON=.*missing.* is not a file"):
        runner.training_python()


def test_training_python_error_names_both_places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLOPS_TRAIN_PYTHON", raising=False)
    monkeypatch.setattr(runner, "repo_root", lambda: tmp_path)  # a root without .venv-train
    with pytest.raises(runner.TrainingPythonNotFound) as info:
        runner.training_python()
    assert "MLOPS_TRAIN_PYTHON" in str(info.value) and str(tmp_path / ".venv-train/bin/python") in str(info.value)


def test_environment_puts_repo_root_first_on_pythonpath() -> None:
    env = runner.training_environment({"PYTHONPATH": "/other", "HOME": "/h"})
    assert env["PYTHONPATH"] == f"{runner.repo_root()}{os.pathsep}/other"
    assert (runner.repo_root() / "include" / "mlops" / "training" / "runner.py").is_file()
    assert env["HOME"] == "/h" and env["PYTHONUNBUFFERED"] == "1"


def test_lines_stream_to_log_before_the_process_ends(tmp_path: Path) -> None:
    # The stand-in prints, then waits for a file the log callback creates: only live streaming passes.
    go = tmp_path / "go"
    py = _script(
        tmp_path / "python",
        f'echo "epoch 1/2 ($PYTHONPATH)"\nfor i in $(seq 100); do [ -f {go} ] && break; sleep 0.05; done\n'
        f"[ -f {go} ] || exit 9\nmkdir -p {tmp_path}/out && echo done\n",
    )
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch 1/2"):
            go.touch()

    with pytest.raises(TrainingFailed, match="did not finish"):  # no metrics.json written by the stand-in
        runner.run_training_process(_config(tmp_path), py, log=log, timeout_s=20)
    assert lines[0].startswith("starting training: " + py + " -m include.mlops.training.train --config ")
    assert lines[1].startswith("epoch 1/2 (")
    assert lines[1][len("epoch 1/2 (") :].split(os.pathsep)[0] == str(runner.repo_root())
    assert lines[-1] == "done"
    assert (tmp_path / "out" / "train_config.json").is_file()


def test_failure_raises_with_exit_code_and_last_lines(tmp_path: Path) -> None:
    py = _script(
        tmp_path / "python", 'for i in $(seq 30); do echo "line $i"; done\necho "error: bad thing" >&2\nexit 3\n'
    )
    with pytest.raises(TrainingFailed) as info:
        runner.run_training_process(_config(tmp_path), py, log=lambda _: None)
    msg = str(info.value)
    assert "exited with code 3" in msg and "error: bad thing" in msg
    assert "line 30" in msg and "line 12" in msg and "line 11\n" not in msg  # last 20 lines only


def test_timeout_kills_the_process_and_says_it_resumes(tmp_path: Path) -> None:
    py = _script(tmp_path / "python", "echo started\nexec sleep 30\n")
    t0 = time.monotonic()
    with pytest.raises(TrainingFailed, match=r"within timeout_s=0.5 and was killed; rerunning resumes"):
        runner.run_training_process(_config(tmp_path), py, log=lambda _: None, timeout_s=0.5)
    assert time.monotonic() - t0 < 10


def test_unstartable_interpreter_raises_training_failed(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed, match="cannot start the training interpreter"):
        runner.run_training_process(_config(tmp_path), str(tmp_path / "no-python"), log=lambda _: None)


def test_airflow_env_python_cannot_train_and_says_why(tmp_path: Path) -> None:
    # Airflow's own interpreter has no torch by design: the failure must surface the import error.
    with pytest.raises(TrainingFailed, match="No module named 'torch'"):
        runner.run_training_process(_config(tmp_path), sys.executable, log=lambda _: None, timeout_s=60)


# --- what the trainer inherits: a minimal environment and only the GPUs the router reserved --------


def _env_reporter(tmp_path: Path) -> str:
    """A stand-in trainer that writes its whole environment (a real child process) and exits."""
    return _script(tmp_path / "python", f"env > {tmp_path}/child.env\n")


def _child_env(tmp_path: Path) -> dict[str, str]:
    lines = (tmp_path / "child.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _gpu_placement(devices: list[int]) -> dict[str, object]:
    return {
        "target": "local",
        "node_name": "box",
        "resources_requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(len(devices))},
        "claim": {"node_name": "box", "gpu_milli_by_device": [[d, 1000] for d in devices]},
    }


def test_worker_secrets_do_not_reach_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgres://admin:hunter2@db/prod")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(TrainingFailed, match="did not finish"):  # the stand-in writes no metrics.json
        runner.run_training_process(_config(tmp_path), _env_reporter(tmp_path), log=lambda _: None)
    env = _child_env(tmp_path)
    assert "hunter2" not in (tmp_path / "child.env").read_text()
    assert "AIRFLOW_CONN_WAREHOUSE" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == os.environ["PATH"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(runner.repo_root())
    allowed = {*runner.INHERITED_ENV, "PYTHONPATH", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"}
    # the shell itself adds PWD, SHLVL and _
    assert set(env) - {"PWD", "SHLVL", "_"} <= allowed, sorted(set(env) - allowed)


def test_the_trainer_sees_only_the_gpus_the_placement_reserved(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(TrainingFailed, match="did not finish"):
        runner.run_training_process(
            _config(tmp_path), _env_reporter(tmp_path), log=lines.append, placement=_gpu_placement([3, 1])
        )
    env = _child_env(tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "CUDA_VISIBLE_DEVICES='1,3'" in lines[0]


def test_a_cpu_placement_hides_every_gpu_from_the_trainer(tmp_path: Path) -> None:
    cpu = {"target": "local", "resources_requests": {"cpu": "1"}, "claim": {"node_name": "box"}}
    with pytest.raises(TrainingFailed, match="did not finish"):
        runner.run_training_process(_config(tmp_path), _env_reporter(tmp_path), log=lambda _: None, placement=cpu)
    assert _child_env(tmp_path)["CUDA_VISIBLE_DEVICES"] == ""


def test_a_gpu_placement_naming_no_device_is_refused_before_the_trainer_starts(tmp_path: Path) -> None:
    placement = {**_gpu_placement([]), "resources_requests": {"nvidia.com/gpu": "1"}}
    with pytest.raises(PlacementError, match=r"asks for GPUs .* but its claim names no GPU device"):
        runner.run_training_process(_config(tmp_path), _env_reporter(tmp_path), log=lambda _: None, placement=placement)
    assert not (tmp_path / "child.env").exists()


# --- the router's reservation is renewed while the training runs ----------------------------------


def test_a_running_trainings_reservation_outlives_its_ttl_and_is_released_at_the_end(tmp_path: Path) -> None:
    from include.mlops.retraining import RunIdentity, route_training, training_task_key
    from include.mlops.routing.providers.local import LocalMachineProvider
    from include.mlops.routing.reservations import ReservationBook
    from include.mlops.routing.router import ResourceRouter
    from include.mlops.routing.training import release_training, reservation_lease

    ttl_s = 1.0
    router = ResourceRouter(LocalMachineProvider(), ReservationBook(tmp_path / "book.sqlite", ttl_s=ttl_s))
    ident = RunIdentity("retrain", "manual__lease")
    key = training_task_key(ident)
    placement = route_training(ident, {"gpu_count": 0, "gpu_types": []}, router=router, log=lambda _: None)
    assert [r.task_key for r in router.book.active()] == [key]

    held: list[bool] = []
    trainer = _script(tmp_path / "python", "sleep 3.5\n")  # a training 3.5 TTLs long
    t0 = time.monotonic()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            held.append(any(r.task_key == key for r in router.book.active()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with pytest.raises(TrainingFailed, match="did not finish"):
            runner.run_training_process(
                _config(tmp_path),
                trainer,
                log=lambda _: None,
                placement=placement,
                lease=reservation_lease(placement, router=router),
            )
    finally:
        done.set()
        sampler.join()
    assert time.monotonic() - t0 >= 3 * ttl_s
    assert len(held) >= 12 and all(held), held  # never lapsed, though 3 TTLs passed
    assert not [t for t in threading.enumerate() if t.name == "reservation-heartbeat"]  # stopped with training
    assert release_training(key, router=router, log=lambda _: None) == 1  # what retraining.train does next
    assert router.book.active() == []
