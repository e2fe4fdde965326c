"""Start the training entrypoint as a child process from Airflow's environment (no torch here).

The child runs under the training interpreter (.venv-train or an image's python); its log
lines stream into the task log as they come, and a failure raises TrainingFailed with its tail.

The child gets an explicit minimal environment (``training_environment``), never the worker's:
a worker holds secrets (``AIRFLOW_CONN_*``, cloud credentials) that training has no use for, and
the trainer reads files from the shared data root, where anything it could leak would persist.
It sees only the GPUs the router reserved for it (``CUDA_VISIBLE_DEVICES`` from the placement's
claim), and a reservation ``lease`` is renewed while it runs, so the router's book keeps counting
the machine share a long training holds instead of letting it expire after its TTL.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from include.mlops.errors import PlacementError, SettingsError, TrainingFailed
from include.mlops.training.config import TrainConfig, TrainingResult

TRAIN_PYTHON_ENV = "MLOPS_TRAIN_PYTHON"
TRAIN_MODULE = "include.mlops.training.train"
# the training image (docker/train.Dockerfile) of the pod and container launchers
TRAINING_IMAGE_VARIABLE = "mlops_training_image"
CONFIG_FILE = "train_config.json"
FAILURE_TAIL_LINES = 20
GPU_RESOURCE_PREFIXES = ("nvidia.com/gpu", "nvidia.com/mig-")
# The only variables the trainer inherits from the worker (besides those set here): the locale,
# where to find programs, a home for library caches, and the thread-count knobs of the math libraries.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


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


def placement_gpu_ids(placement: Mapping[str, Any] | None) -> list[str]:
    """The GPU device indices the router reserved for this placement (its claim, NVML order).

    A placement that asks for GPUs but names no device is refused: running it would take
    whichever GPUs the driver hands out, not the ones the router counted as taken."""
    if not placement:
        return []
    claim = placement.get("claim") or {}
    ids = sorted({int(pair[0]) for pair in claim.get("gpu_milli_by_device") or ()})
    requests = placement.get("resources_requests") or {}
    asks = any(str(k).startswith(GPU_RESOURCE_PREFIXES) and str(v) not in ("", "0") for k, v in requests.items())
    if asks and not ids and claim.get("mig_profile"):
        raise PlacementError(
            f"placement on {placement.get('node_name') or placement.get('node_pool')!r} claims a MIG slice "
            f"({claim.get('mig_profile')}), which a local process or Docker container cannot be limited to by "
            "device index; run MIG placements on Kubernetes (the device plugin assigns the slice)"
        )
    if asks and not ids:
        raise PlacementError(
            f"placement on {placement.get('node_name') or placement.get('node_pool')!r} asks for GPUs "
            f"({dict(requests)}) but its claim names no GPU device (claim={dict(claim)}): the router's choice "
            "could not be enforced; clear `route` to place it again"
        )
    return [str(i) for i in ids]


def training_environment(base: Mapping[str, str] | None = None, gpu_ids: Iterable[str] = ()) -> dict[str, str]:
    """The trainer's whole environment: the few INHERITED_ENV variables of `base` (default
    os.environ), the repo root first on PYTHONPATH, unbuffered output, and exactly the GPUs
    `gpu_ids` (none: an empty CUDA_VISIBLE_DEVICES hides every GPU from a CPU placement)."""
    src = os.environ if base is None else base
    env = {k: src[k] for k in INHERITED_ENV if k in src}
    env.setdefault("PATH", DEFAULT_PATH)
    root = str(repo_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, src.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the task log as they are printed
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers devices as NVML (the router) does
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    return env


class Lease(Protocol):
    """Something held while training runs that lapses unless renewed (a router reservation)."""

    @property
    def every_s(self) -> float: ...

    def renew(self) -> None: ...


@contextmanager
def keep_renewed(lease: Lease | None, log: Callable[[str], None] = print) -> Iterator[None]:
    """Renew `lease` every ``lease.every_s`` seconds from a daemon thread until the block ends."""
    if lease is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease.every_s):
            try:
                lease.renew()
            except Exception as exc:  # noqa: BLE001 - a missed renewal must not kill the training
                log(f"could not renew the reservation ({type(exc).__name__}: {exc}); retrying in {lease.every_s:.0f}s")

    thread = threading.Thread(target=beat, name="reservation-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def check_under_data_root(config: TrainConfig, data_root: str, where: str = "the training pod") -> None:
    root = Path(data_root)
    for name in ("data_path", "output_dir", "checkpoint_dir"):
        p = Path(getattr(config, name)).resolve()
        if not p.is_relative_to(root):
            raise SettingsError(
                f"TrainConfig.{name}={p} is outside the data root {root}: {where} only sees the data "
                f"root, so land batches and write runs under it"
            )


def write_config(config: TrainConfig) -> Path:
    """The config as JSON next to the outputs it produces (kept for the record)."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    path.write_text(config.to_json())
    return path


def launch_failed(
    what: str, config_path: str | Path, exc: BaseException, *, tail: Iterable[str], how: str = ""
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
    *,
    timeout_s: float | None = None,
    placement: Mapping[str, Any] | None = None,
    lease: Lease | None = None,
) -> TrainingResult:
    """Run training to completion (resuming from config.checkpoint_dir if a checkpoint is there).

    ``placement``: the router's decision; the child sees only its GPUs (none without one).
    ``lease``: renewed while the child runs (the placement's reservation).
    Raises TrainingFailed with the exit status and the last log lines on failure or timeout.
    """
    gpu_ids = placement_gpu_ids(placement)
    config_path = write_config(config)
    cmd = training_command(config_path, python_executable)
    log(f"starting training: {' '.join(cmd)} (CUDA_VISIBLE_DEVICES={','.join(gpu_ids)!r})")
    with keep_renewed(lease, log):
        return _run_child(cmd, config, config_path, python_executable, log, timeout_s, gpu_ids)


def _run_child(
    cmd: list[str],
    config: TrainConfig,
    config_path: Path,
    python_executable: str,
    log: Callable[[str], None],
    timeout_s: float | None,
    gpu_ids: list[str],
) -> TrainingResult:
    tail: collections.deque[str] = collections.deque(maxlen=FAILURE_TAIL_LINES)
    timed_out = threading.Event()
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one ordered stream: errors appear where they happened
            stdin=subprocess.DEVNULL,
            env=training_environment(gpu_ids=gpu_ids),
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
