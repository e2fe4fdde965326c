"""Training checkpoints: written atomically, loaded only as tensors and plain data.

Checkpoints live on the shared data root, which more than one party can write: they are loaded
with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers (dicts,
lists, numbers, strings) and never runs code from the file. Everything saved is of that kind:
RNG states as tensors (numpy's as its key tensor plus numbers), no numpy arrays, no objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from include.mlops.errors import MlopsError
from include.mlops.training.config import TrainConfig


class CheckpointMismatch(MlopsError):
    """The checkpoint in checkpoint_dir was written by a run with different settings."""


class CheckpointRefused(MlopsError):
    """The checkpoint holds something other than tensors and plain data: it is not loaded."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write then rename: a kill mid-write leaves the previous checkpoint intact."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of writers killed mid-save are garbage (the rename never happened).
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state in checkpoint-safe form (a tensor and plain numbers)."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any] | None:
    import pickle

    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointRefused(
            f"checkpoint {path} holds more than tensors and plain data, so it is not loaded (weights_only): "
            f"{first}. It was not written by this trainer (or was altered); delete it to train from scratch"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointRefused(f"checkpoint {path} is a {type(state).__name__}, not a checkpoint dict; delete it")
    if state.get("resume_key") != config.resume_key():
        raise CheckpointMismatch(
            f"checkpoint {path} was written for settings {state.get('resume_key')}, this run has "
            f"{config.resume_key()}: use a new checkpoint_dir or delete the old checkpoint"
        )
    return state
