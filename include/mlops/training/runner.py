"""Start the training entrypoint as a child process from Airflow's environment (no torch here).

The child runs under the training interpreter (.venv-train or an image's python); its log
lines stream into the task log as they come, and a failure raises TrainingFailed with its tail.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from include.mlops.errors import SettingsError, TrainingFailed
from include.mlops.training.config import TrainConfig, TrainingResult

TRAIN_PYTHON_ENV = "MLOPS_TRAIN_PYTHON"
TRAIN_MODULE = "include.mlops.training.train"
CONFIG_FILE = "train_config.json"
FAILURE_TAIL_LINES = 20


class TrainingPythonNotFound(SettingsError):
    """No interpreter of the training environment could be found."""


def repo_root() -> Path:
    """The directory holding include/ (this file is include/mlops/training/runner.py)."""
    return Path(__file__).resolve().parents[3]


def training_python() -> str:
    """The training interpreter: $MLOPS_TRAIN_PYTHON, else <repo>/.venv-train/bin/python."""
    from_env = os.environ.get(TRAIN_PYTHON_ENV)
    if from_env:
        if not Path(from_env).is_file():
            raise TrainingPythonNotFound(f"{TRAIN_PYTHON_ENV}={from_env!r} is not a file")
        return from_env
    default = repo_root() / ".venv-train" / "bin" / "python"
    if default.is_file():
        return str(default)
    raise TrainingPythonNotFound(
        f"no training interpreter: set {TRAIN_PYTHON_ENV} to a python with torch, or create "
        f"{default} (python3 -m venv {default.parent.parent} && "
        f"{default.parent}/pip install -r {repo_root() / 'requirements-train.txt'})"
    )


def training_command(config_path: str | Path, python_executable: str) -> list[str]:
    return [python_executable, "-m", TRAIN_MODULE, "--config", str(config_path)]


def training_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with the repo root first on PYTHONPATH and unbuffered output."""
    env = dict(os.environ if base is None else base)
    root = str(repo_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the task log as they are printed
    return env


def write_config(config: TrainConfig) -> Path:
    """The config as JSON next to the outputs it produces (kept for the record)."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    path.write_text(config.to_json())
    return path


def launch_failed(
    what: str, config_path: str | Path, exc: BaseException, tail: Iterable[str], how: str = ""
) -> TrainingFailed:
    """A pod or container launch that failed: what failed (and how), its config, the launcher's own
    first line, and the training's last log lines (the trainer's error is usually there)."""
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    last = "\n".join(tail) or "(no output)"
    return TrainingFailed(f"{what} failed{how} (config {config_path}): {first_line}\nLast log lines:\n{last}")


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def run_training_process(
    config: TrainConfig,
    python_executable: str,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> TrainingResult:
    """Run training to completion (resuming from config.checkpoint_dir if a checkpoint is there).

    Raises TrainingFailed with the exit status and the last log lines on failure or timeout.
    """
    config_path = write_config(config)
    cmd = training_command(config_path, python_executable)
    log(f"starting training: {' '.join(cmd)}")
    tail: collections.deque[str] = collections.deque(maxlen=FAILURE_TAIL_LINES)
    timed_out = threading.Event()
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one ordered stream: errors appear where they happened
            stdin=subprocess.DEVNULL,
            env=training_environment(),
            cwd=str(repo_root()),
            text=True,
            bufsize=1,
            errors="replace",
        )
    except OSError as exc:
        raise TrainingFailed(f"cannot start the training interpreter {python_executable!r}: {exc}") from exc

    def _kill_on_timeout() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, _kill_on_timeout) if timeout_s is not None else None
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            log(line)
        code = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        # An exception here (task killed, log callback failed) must not leave an orphan trainer.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    last = "\n".join(tail) or "(no output)"
    if timed_out.is_set():
        raise TrainingFailed(
            f"training did not finish within timeout_s={timeout_s} and was killed; rerunning "
            f"resumes from the last checkpoint in {config.checkpoint_dir}. Last log lines:\n{last}"
        )
    if code != 0:
        raise TrainingFailed(f"training process {_describe_exit(code)} (config {config_path}). Last log lines:\n{last}")
    return TrainingResult.from_output_dir(config.output_dir)
