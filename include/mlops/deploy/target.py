"""What a serving target is: a stable model, an optional canary and a router splitting traffic by weight.

One small Protocol; one implementation per profile (local processes, containers, Kubernetes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from include.mlops.errors import ServingBusy


@dataclass(frozen=True)
class ModelRef:
    """The model version to serve: where its ONNX file is and which image it was built into."""

    name: str
    version: str
    model_path: Path
    image_digest: str | None = None


@dataclass(frozen=True)
class Backend:
    """One running model server."""

    name: str
    version: str
    url: str
    model_path: str
    image_digest: str | None = None
    port: int | None = None
    pid: int | None = None
    # kernel start time of pid, so a recycled pid is never mistaken for our server
    pid_start_ticks: int | None = None
    log_path: str | None = None
    started_at_unix: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Backend | None:
        return None if d is None else cls(**d)


@dataclass(frozen=True)
class ServingState:
    router_url: str | None
    stable: Backend | None
    canary: Backend | None
    canary_weight_pct: int

    @property
    def stable_weight_pct(self) -> int:
        return 100 - self.canary_weight_pct if self.canary is not None else 100


@dataclass(frozen=True)
class ServingHealth:
    """Whether each recorded part of the deployment runs now: None where nothing is recorded."""

    stable: bool | None
    canary: bool | None
    router: bool | None

    @property
    def dead(self) -> tuple[str, ...]:
        """The parts recorded in the serving state whose process is gone."""
        return tuple(k for k in ("stable", "canary", "router") if getattr(self, k) is False)


@runtime_checkable
class DeployTarget(Protocol):
    """Every operation is idempotent: a retried Airflow task finds its earlier work and continues."""

    def status(self) -> ServingState: ...

    def ensure_stable(self, model: ModelRef, ready_timeout_s: float = 60.0) -> Backend:
        """Serve `model` as stable with 100 % of the traffic (first deployment or a direct replacement).

        BackendNotReady (the old stable left serving) if it never gets ready within ``ready_timeout_s``."""
        ...

    def start_canary(
        self, model: ModelRef, ready_timeout_s: float = 60.0, owner: dict[str, Any] | None = None
    ) -> Backend:
        """Start `model` beside the stable with 0 % traffic, owned by `owner` (a release's dag_id/run_id).

        BackendNotReady (nothing left running) if it never gets ready; ServingBusy if another
        release's canary runs.
        """
        ...

    def set_canary_weight(self, pct: int) -> None: ...

    def promote(self) -> Backend:
        """Canary takes 100 % and becomes the stable; the old stable is drained, then stopped."""
        ...

    def rollback(self, reason: str, owner: dict[str, Any] | None = None) -> bool:
        """Stable takes 100 % at once; the canary is drained, then stopped. With `owner`, only that
        release's canary is removed. True if a canary was removed."""
        ...

    def canary_owner(self) -> dict[str, Any] | None:
        """The release that started the running canary (None: no canary, or owner not recorded)."""
        ...

    def backend_alive(self, b: Backend) -> bool: ...

    def record(self, key: str) -> Any:
        """A release's bookkeeping entry kept with the serving state (e.g. a pending alias move)."""
        ...

    def set_record(self, key: str, value: Any) -> None: ...

    def health(self) -> ServingHealth:
        """Liveness of stable, canary and router, cheap enough to ask every second."""
        ...

    def restore(self) -> tuple[str, ...]:
        """Restart a dead stable or router from the recorded state (never a canary); what was restored."""
        ...

    def stop_all(self) -> None: ...


def describe_owner(owner: dict[str, Any] | None) -> str:
    """The release that owns a canary, as people read it: dag_id/run_id."""
    return f"{owner.get('dag_id', '?')}/{owner.get('run_id', '?')}" if owner else "(owner not recorded)"


def refuse_foreign_canary(
    held_version: str | None,
    holder: dict[str, Any] | None,
    model: ModelRef,
    *,
    owner: dict[str, Any] | None,
    where: str,
) -> None:
    """ServingBusy if the canary in place is another version, or another release's (the rule of every target)."""
    if held_version != str(model.version) or (owner is not None and holder not in (None, owner)):
        raise ServingBusy(
            f"release {describe_owner(holder)} is in progress with canary v{held_version} ({where}); it must "
            f"promote or roll back (or run the rollback DAG) before version {model.version} can start"
        )
