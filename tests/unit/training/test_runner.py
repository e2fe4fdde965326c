"""The runner with stand-in interpreters (tiny shell scripts): streaming, failure tail, timeout."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from include.mlops.errors import SettingsError, TrainingFailed
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
