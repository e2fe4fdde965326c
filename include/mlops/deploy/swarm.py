"""The `docker` profile's deploy target: a Docker Swarm service per track behind the local Caddy router.

Swarm runs the replicas (digest-pinned image, healthcheck, restarts, rolling update); Caddy, a
supervised process on this host as in the `local` profile, splits traffic by weight across the
replicas' addresses on the serving network. The deployment's state lives in the services' labels
(version, digest, owner, weight, records), so a retried task or another worker finds it; only the
router's pid and ports are in state_dir/router.json, the router being a process of this host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.deploy import caddy, router
from include.mlops.deploy import swarm_services as sv
from include.mlops.deploy.process import pid_alive, stop_process_group
from include.mlops.deploy.swarm_routing import (
    ReplicaSplit,
    SwarmSampleSource,
    drain,
    patch_handler,
    proxy_handler,
    router_config,
)
from include.mlops.deploy.target import Backend, ModelRef, ServingHealth, ServingState, refuse_foreign_canary
from include.mlops.errors import BackendNotReady, DeployError

if TYPE_CHECKING:
    from docker.client import DockerClient

L = sv.LABEL
TRACKS = ("stable", "canary")


class SwarmTarget:
    """DeployTarget over Docker Swarm; every move converges when repeated."""

    def __init__(
        self,
        state_dir: Path,
        model_name: str,
        *,
        registry: str,
        replicas: int = 2,
        base_url: str | None = None,
        limits: sv.ServiceLimits | None = None,
        caddy_executable: str | None = None,
        monitor_s: float = 5.0,
        drain_timeout_s: float = 10.0,
        update_timeout_s: float = 180.0,
    ) -> None:
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 32:
            raise DeployError(f"serving replicas={replicas!r}: must be an integer in 1..32")
        if not registry:
            raise DeployError("the docker profile serves images from a registry: connection docker_default "
                              "needs extra.registry (e.g. 127.0.0.1:5001)")  # fmt: skip
        self.state_dir = Path(state_dir)
        self.model_name = model_name
        self.registry = registry
        self.replicas = replicas
        self.base_url = base_url
        self.limits = limits or sv.ServiceLimits()
        self.caddy_executable = caddy_executable
        self.monitor_s = monitor_s
        self.drain_timeout_s = drain_timeout_s
        self.update_timeout_s = update_timeout_s
        self.network = sv.SERVING_NETWORK
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._client: DockerClient | None = None

    # ---- docker --------------------------------------------------------------------------------

    @property
    def client(self) -> DockerClient:
        if self._client is None:
            from docker.client import DockerClient

            url = self.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            self._client = DockerClient(base_url=url, version="auto", timeout=60)
        return self._client

    def _service(self, track: str) -> Any | None:
        found = self.client.services.list(filters={"name": sv.service_name(self.model_name, track)})
        found = [s for s in found if s.name == sv.service_name(self.model_name, track)]
        return found[0] if found else None

    def _backend(self, svc: Any | None) -> Backend | None:
        if svc is None:
            return None
        lb = sv.labels_of(svc)
        reps = sv.running_replicas(svc, self.network)
        return Backend(
            name=self.model_name,
            version=lb.get(f"{L}.version", "?"),
            url=reps[0].url if reps else "",
            model_path=lb.get(f"{L}.model_path", ""),
            image_digest=lb.get(f"{L}.image_digest"),
            port=sv.CONTAINER_PORT,
            log_path=f"docker service logs {svc.name}",
            started_at_unix=float(lb.get(f"{L}.started_at", "0")),
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise moves of this host's workers (Swarm's own version check guards each update)."""
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ---- public API --------------------------------------------------------------------------

    def status(self) -> ServingState:
        stable, canary = self._service("stable"), self._service("canary")
        router = self._router()
        weight = int(sv.labels_of(canary).get(f"{L}.weight_pct", "0")) if canary else 0
        return ServingState(
            router_url=f"http://127.0.0.1:{router['http_port']}" if router else None,
            stable=self._backend(stable),
            canary=self._backend(canary),
            canary_weight_pct=weight,
        )

    def ensure_stable(self, model: ModelRef, ready_timeout_s: float = 60.0) -> Backend:
        with self._locked():
            sv.ensure_swarm(self.client)
            stable, canary = self._service("stable"), self._service("canary")
            if canary is not None:
                raise DeployError(
                    f"cannot replace the stable with version {model.version} while canary version "
                    f"{sv.labels_of(canary).get(f'{L}.version')} runs; promote or roll back the canary first"
                )
            if stable is None:
                stable = self._create(model, "stable", ready_timeout_s)
            elif sv.labels_of(stable).get(f"{L}.image_digest") != model.image_digest:
                self._roll_stable_to(stable, model)
            self._apply(weight_pct=0)
            backend = self._backend(stable)
            assert backend is not None
            return backend

    def start_canary(
        self, model: ModelRef, ready_timeout_s: float = 60.0, owner: dict[str, Any] | None = None
    ) -> Backend:
        with self._locked():
            if self._service("stable") is None:
                raise DeployError("no stable deployment to canary against; run ensure_stable first")
            canary = self._service("canary")
            if canary is not None:
                lb = sv.labels_of(canary)
                holder = json.loads(lb.get(f"{L}.owner", "null"))
                refuse_foreign_canary(
                    lb.get(f"{L}.version"), holder, model, owner=owner, where=f"service {canary.name}"
                )
                if sv.running_replicas(canary, self.network):
                    backend = self._backend(canary)
                    assert backend is not None
                    return backend
                self._apply(weight_pct=0, with_canary=False)
                canary.remove()
            svc = self._create(model, "canary", ready_timeout_s, owner=owner)
            self._apply(weight_pct=0)
            backend = self._backend(svc)
            assert backend is not None
            return backend

    def set_canary_weight(self, pct: int) -> None:
        if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
            raise DeployError(f"canary weight {pct!r} is not an integer percentage in 0..100")
        with self._locked():
            canary = self._service("canary")
            if canary is None:
                raise DeployError(f"no canary running to give {pct} % of the traffic")
            sv.set_labels(self.client, canary, {f"{L}.weight_pct": str(pct)})
            self._apply(weight_pct=pct)

    def promote(self) -> Backend:
        """Canary takes 100 %; the stable service rolls to the canary's digest (start-first, rolled back by
        Swarm if the new tasks fail within the monitor window); stable back to 100 %; canary removed."""
        with self._locked():
            stable, canary = self._service("stable"), self._service("canary")
            if stable is None:
                raise DeployError("nothing to promote: no stable deployment")
            if canary is not None:
                if not sv.running_replicas(canary, self.network):
                    raise DeployError(
                        f"canary service {canary.name} has no running replica; cannot promote it. "
                        f"Task errors: {'; '.join(sv.task_errors(canary)) or 'none reported'}"
                    )
                clb = sv.labels_of(canary)
                sv.set_labels(self.client, canary, {f"{L}.weight_pct": "100"})
                self._apply(weight_pct=100)
                if sv.labels_of(stable).get(f"{L}.image_digest") != clb.get(f"{L}.image_digest"):
                    model = ModelRef(self.model_name, clb[f"{L}.version"], Path(clb.get(f"{L}.model_path", "")),
                                     clb.get(f"{L}.image_digest"))  # fmt: skip
                    self._roll_stable_to(stable, model)
                self._apply(weight_pct=0, with_canary=False)
                self._remove_canary(canary)
            backend = self._backend(self._service("stable"))
            assert backend is not None
            return backend

    def rollback(self, reason: str, owner: dict[str, Any] | None = None) -> bool:
        with self._locked():
            canary = self._service("canary")
            if canary is None:
                return False
            lb = sv.labels_of(canary)
            holder = json.loads(lb.get(f"{L}.owner", "null"))
            if owner is not None and holder not in (None, owner):
                return False
            if not sv.running_replicas(canary, self.network):
                time.sleep(caddy.SETTLE_S)  # let the router's retries of requests that met it finish
            if self._service("stable") is not None:
                self._apply(weight_pct=0, with_canary=False)
                last = {"reason": reason, "version": lb.get(f"{L}.version"), "canary_owner": holder, "by": owner,
                        "at_unix": time.time()}  # fmt: skip
                self._set_stable_label(f"{L}.last_rollback", sv.dumps(last))
            self._remove_canary(canary)
            return True

    def canary_owner(self) -> dict[str, Any] | None:
        canary = self._service("canary")
        return json.loads(sv.labels_of(canary).get(f"{L}.owner", "null")) if canary else None

    def record(self, key: str) -> Any:
        stable = self._service("stable")
        raw = sv.labels_of(stable).get(f"{L}.record.{key}") if stable else None
        return json.loads(raw) if raw else None

    def set_record(self, key: str, value: Any) -> None:
        with self._locked():
            self._set_stable_label(f"{L}.record.{key}", None if value is None else sv.dumps(value))

    def backend_alive(self, b: Backend) -> bool:
        for track in TRACKS:
            svc = self._service(track)
            if svc is not None and sv.labels_of(svc).get(f"{L}.version") == b.version:
                return bool(sv.running_replicas(svc, self.network))
        return False

    def health(self) -> ServingHealth:
        """stable/canary: a replica runs; router: Caddy runs and routes to exactly the running replicas
        (a replica Swarm replaced has a new address: restore() routes to it)."""
        stable, canary = self._service("stable"), self._service("canary")
        router = self._router()
        routed_ok: bool | None = None
        if router is not None:
            routed_ok = pid_alive(router["pid"], router.get("pid_start_ticks")) and self._routed() == self._wanted()
        return ServingHealth(
            stable=None if stable is None else bool(sv.running_replicas(stable, self.network)),
            canary=None if canary is None else bool(sv.running_replicas(canary, self.network)),
            router=None if stable is None else bool(routed_ok),
        )

    def restore(self) -> tuple[str, ...]:
        """Swarm restarts replicas itself; this restarts a dead router and routes to the running replicas."""
        done: list[str] = []
        with self._locked():
            if self._service("stable") is None:
                return ()
            router = self._router()
            if router is None or not pid_alive(router["pid"], router.get("pid_start_ticks")):
                done.append(f"router (caddy pid {router['pid'] if router else None})")
            wanted = self._wanted()
            if self._routed() != wanted and wanted:
                done.append("route to the running replicas: " + ", ".join(sorted(set(wanted))))
            if done:
                self._apply(weight_pct=self.status().canary_weight_pct)
        return tuple(done)

    def supervisor_args(self) -> list[str]:
        """How the supervisor process rebuilds this target (supervisor.main's options)."""
        args = ["--profile", "docker", "--model-name", self.model_name, "--registry", self.registry,
                "--replicas", str(self.replicas)]  # fmt: skip
        return args + (["--docker-host", self.base_url] if self.base_url else [])

    def keep_supervised(self) -> int:
        """Start the supervisor of this deployment if none runs: it reroutes replicas Swarm replaces."""
        from include.mlops.deploy import supervisor

        return supervisor.start_detached(self.state_dir, target_args=self.supervisor_args())

    def stop_all(self) -> None:
        from include.mlops.deploy import supervisor

        supervisor.stop(self.state_dir)  # first: it would route to what stop_all removes
        with self._locked():
            for track in ("canary", "stable"):
                svc = self._service(track)
                if svc is not None:
                    svc.remove()
            held = self._router()
            if held is not None:
                stop_process_group(held["pid"], held.get("pid_start_ticks"), grace_s=5.0)
                self._router_path.unlink(missing_ok=True)

    def sample_source(self) -> SwarmSampleSource:
        return SwarmSampleSource(self)

    def replica_urls(self, b: Backend) -> list[str]:
        for track in TRACKS:
            svc = self._service(track)
            if svc is not None and sv.labels_of(svc).get(f"{L}.version") == b.version:
                return [r.url for r in sv.running_replicas(svc, self.network)]
        return []

    # ---- services --------------------------------------------------------------------------------

    def _labels(self, model: ModelRef, track: str, owner: dict[str, Any] | None) -> dict[str, str]:
        labels = {
            f"{L}.model": self.model_name,
            f"{L}.track": track,
            f"{L}.version": str(model.version),
            f"{L}.image_digest": model.image_digest or "",
            f"{L}.model_path": str(model.model_path),
            f"{L}.started_at": f"{time.time():.3f}",
        }
        if track == "canary":
            labels[f"{L}.owner"] = sv.dumps(owner)
            labels[f"{L}.weight_pct"] = "0"
        return labels

    def _image(self, model: ModelRef) -> str:
        if not model.image_digest:
            raise DeployError(
                f"{model.name} v{model.version} has no image digest: the docker profile serves the image "
                "build_image pushed (tag image.digest on the model version); build it first"
            )
        return sv.image_reference(self.registry, model.name, model.image_digest)

    def _create(self, model: ModelRef, track: str, ready_timeout_s: float, owner: dict[str, Any] | None = None) -> Any:
        sv.ensure_swarm(self.client)
        spec = sv.service_spec(
            self.client,
            name=sv.service_name(self.model_name, track),
            image=self._image(model),
            replicas=self.replicas,
            labels=self._labels(model, track, owner),
            env={"MLOPS_IMAGE_DIGEST": model.image_digest or ""},
            limits=self.limits,
            network=sv.ensure_network(self.client, self.network),
            monitor_s=self.monitor_s,
            stop_grace_s=self.drain_timeout_s,
        )
        svc = sv.create_service(self.client, spec)
        self._wait_ready(svc, track, model, ready_timeout_s)
        return svc

    def _wait_ready(self, svc: Any, track: str, model: ModelRef, timeout_s: float) -> None:
        """All replicas running (healthy); at the deadline the service is removed, naming Swarm's task errors."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(sv.running_replicas(svc, self.network)) >= self.replicas:
                return
            time.sleep(0.25)
        errors = sv.task_errors(svc)
        running = len(sv.running_replicas(svc, self.network))
        svc.remove()
        raise BackendNotReady(
            f"{track} {model.name} v{model.version} did not become ready within {timeout_s:g} s "
            f"({running} of {self.replicas} replicas healthy); service {svc.name} removed. "
            f"docker service ps: {'; '.join(errors) or 'no task error reported (still starting)'}"
        )

    def _roll_stable_to(self, stable: Any, model: ModelRef) -> None:
        changes = {f"{L}.version": str(model.version), f"{L}.image_digest": model.image_digest or "",
                   f"{L}.model_path": str(model.model_path), f"{L}.started_at": f"{time.time():.3f}"}  # fmt: skip
        image = self._image(model)
        sv.update_image(self.client, stable, image, changes)
        # the monitor window must pass before Swarm calls the update completed
        sv.wait_update(
            stable,
            image=image,
            replicas=self.replicas,
            timeout_s=self.update_timeout_s + self.monitor_s * self.replicas,
        )

    def _remove_canary(self, canary: Any) -> None:
        drain([r.url for r in sv.running_replicas(canary, self.network)], self.drain_timeout_s)
        with contextlib.suppress(Exception):
            canary.remove()

    def _set_stable_label(self, key: str, value: str | None) -> None:
        stable = self._service("stable")
        if stable is None:
            if value is None:
                return
            raise DeployError(f"no stable service of {self.model_name} to record {key} on")
        sv.set_labels(self.client, stable, {key: value})

    # ---- router ----------------------------------------------------------------------------------

    @property
    def _router_path(self) -> Path:
        return self.state_dir / "router.json"

    def _router(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._router_path.read_text()))
        except (OSError, ValueError):
            return None

    def _split(self, weight_pct: int, with_canary: bool = True) -> ReplicaSplit | None:
        stable = self._service("stable")
        canary = self._service("canary") if with_canary else None
        s = tuple(r.dial for r in sv.running_replicas(stable, self.network)) if stable else ()
        c = tuple(r.dial for r in sv.running_replicas(canary, self.network)) if canary else ()
        if not s and not c:
            return None
        if not c:
            weight_pct = 0
        elif not s:
            weight_pct = 100
        base = caddy.split_for("stable", "canary" if c else None, weight_pct)
        return ReplicaSplit(base.upstreams, replicas=(("stable", s), ("canary", c)))

    def _wanted(self) -> list[str]:
        split = self._split(self.status().canary_weight_pct)
        return split.rotation() if split else []

    def _routed(self) -> list[str] | None:
        import httpx

        router = self._router()
        if router is None:
            return None
        try:
            r = httpx.get(f"http://127.0.0.1:{router['admin_port']}/id/{caddy.PROXY_ID}", timeout=5.0)
            return [u["dial"] for u in r.json().get("upstreams", [])] if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _apply(self, weight_pct: int, with_canary: bool = True) -> None:
        """Route to the running replicas: caddy.json first (the router's holder restarts Caddy from it),
        then Caddy's admin API; a dead router is started again on its old port."""
        split = self._split(weight_pct, with_canary)
        if split is None:
            raise DeployError(f"no running replica of {self.model_name} to route to")
        held = router.RouterProcess.from_dict(self._router())
        if held is None or not held.alive():
            http_port = held.http_port if held else 0
            held = router.start(
                self.state_dir,
                router_config(http_port, 0, split),
                http_port=http_port,
                caddy_executable=self.caddy_executable,
            )
            self._router_path.write_text(json.dumps(held.to_dict()))
            router.write_config(self.state_dir, router_config(held.http_port, held.admin_port, split))
            return
        router.write_config(self.state_dir, router_config(held.http_port, held.admin_port, split))
        patch_handler(held.admin_port, proxy_handler(split))
