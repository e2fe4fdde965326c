"""The `local` profile's deploy target: model-server processes behind a Caddy router on 127.0.0.1.

State lives in state_dir/state.json (pids, ports, versions, weight) under a file lock, so the
separate Airflow task processes of one release continue the same deployment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from include.mlops.deploy import caddy, model_server, router
from include.mlops.deploy.process import log_tail, pid_alive, stop_process_group
from include.mlops.deploy.target import Backend, ModelRef, ServingHealth, ServingState, refuse_foreign_canary
from include.mlops.errors import DeployError


class LocalProcessTarget:
    """Serve models as detached local processes; route with Caddy (round_robin over an interleaved list)."""

    def __init__(
        self,
        state_dir: Path,
        python_executable: str,
        *,
        caddy_executable: str | None = None,
        drain_timeout_s: float = 30.0,
        project_root: Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.python_executable = python_executable
        self.caddy_executable = caddy_executable
        self.drain_timeout_s = drain_timeout_s
        # the server is started as `python -m include.mlops.serving.server` from the project root
        self.project_root = project_root or Path(__file__).resolve().parents[3]
        self.state_dir.mkdir(parents=True, exist_ok=True)

    # ---- state -------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the state lock, yield the state dict, write it back atomically on success."""
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                st = self._read()
                yield st
                self._write(st)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"router": None, "stable": None, "canary": None, "canary_weight_pct": 0, "retired": []}
        st: dict[str, Any] = json.loads(self.state_path.read_text())
        return st

    def _write(self, st: dict[str, Any]) -> None:
        st["updated_at_unix"] = time.time()
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2))
        tmp.replace(self.state_path)

    def _event(self, kind: str, **fields: Any) -> None:
        with open(self.state_dir / "events.jsonl", "a") as f:
            f.write(json.dumps({"ts": time.time(), "event": kind, **fields}) + "\n")

    # ---- public API --------------------------------------------------------------------------

    def status(self) -> ServingState:
        st = self._read()
        router = st.get("router")
        return ServingState(
            router_url=f"http://127.0.0.1:{router['http_port']}" if router else None,
            stable=Backend.from_dict(st.get("stable")),
            canary=Backend.from_dict(st.get("canary")),
            canary_weight_pct=int(st.get("canary_weight_pct", 0)),
        )

    def ensure_stable(self, model: ModelRef, ready_timeout_s: float = 60.0) -> Backend:
        with self._locked() as st:
            self._finish_retirements(st)
            stable = Backend.from_dict(st["stable"])
            if stable and stable.version == model.version and self._backend_alive(stable):
                self._ensure_router(st)
                return stable
            if st.get("canary"):
                raise DeployError(
                    f"cannot replace the stable with version {model.version} while canary version "
                    f"{st['canary']['version']} runs; promote or roll back the canary first"
                )
            new = self._start_backend(model, "stable", ready_timeout_s)
            st["stable"] = new.to_dict()
            st["canary_weight_pct"] = 0
            try:
                with self._stopped_on_error(new):
                    self._ensure_router(st)
                    self._apply(st)
            except BaseException:
                # _ensure_router may already have written the new stable to disk: the state must go
                # on naming the old one, or nothing would ever stop it (seen: an orphaned stable)
                st["stable"] = stable.to_dict() if stable else None
                self._write(st)
                raise
            if stable is not None:
                st["retired"].append(stable.to_dict())
                self._write(st)
                self._finish_retirements(st)
            self._event("stable", version=new.version, replaced=stable.version if stable else None)
            return new

    def start_canary(
        self, model: ModelRef, ready_timeout_s: float = 60.0, owner: dict[str, Any] | None = None
    ) -> Backend:
        """Start `model` as the canary, owned by `owner` (the release: dag_id/run_id) until promoted or removed.

        A canary owned by another release is never reused or replaced: ServingBusy names that release.
        """
        with self._locked() as st:
            self._finish_retirements(st)
            if not st.get("stable"):
                raise DeployError("no stable deployment to canary against; run ensure_stable first")
            self._ensure_router(st)
            canary = Backend.from_dict(st.get("canary"))
            if canary is not None:
                refuse_foreign_canary(
                    canary.version, st.get("canary_owner"), model, owner=owner, where=str(self.state_path)
                )
                if self._backend_alive(canary):
                    return canary
                # same version but dead: take it out of the route, then start again
                st["canary"], st["canary_weight_pct"] = None, 0
                self._apply(st)
            new = self._start_backend(model, "canary", ready_timeout_s)
            st["canary"] = new.to_dict()
            st["canary_owner"] = owner
            st["canary_weight_pct"] = 0
            with self._stopped_on_error(new):
                self._apply(st)
            self._event("canary_started", version=new.version, owner=owner)
            return new

    def set_canary_weight(self, pct: int) -> None:
        if not isinstance(pct, int) or not 0 <= pct <= 100:
            raise DeployError(f"canary weight {pct!r} is not an integer percentage in 0..100")
        with self._locked() as st:
            if not st.get("canary"):
                raise DeployError(f"no canary running to give {pct} % of the traffic")
            self._ensure_router(st)
            st["canary_weight_pct"] = pct
            self._apply(st)
            self._event("weight", canary_weight_pct=pct)

    def promote(self) -> Backend:
        with self._locked() as st:
            canary = Backend.from_dict(st.get("canary"))
            if canary is None:
                # already promoted (a retried task): finish any draining and report the stable
                self._finish_retirements(st)
                if not st.get("stable"):
                    raise DeployError("nothing to promote: no canary and no stable deployment")
                return Backend.from_dict(st["stable"])  # type: ignore[return-value]
            if not self._backend_alive(canary):
                raise DeployError(
                    f"canary version {canary.version} (pid {canary.pid}) is not running; "
                    f"cannot promote it. Log tail:\n{log_tail(canary.log_path)}"
                )
            self._ensure_router(st)
            old = st["stable"]
            # canary is already fully up: route everything to it, then it is the stable
            st["stable"], st["canary"], st["canary_weight_pct"] = canary.to_dict(), None, 0
            st["canary_owner"] = None
            self._apply(st)
            if old:
                st["retired"].append(old)
            self._write(st)
            self._finish_retirements(st)
            self._event("promoted", version=canary.version, previous=old["version"] if old else None)
            return canary

    def rollback(self, reason: str, owner: dict[str, Any] | None = None) -> bool:
        """Remove the canary (stable back to 100 %); True if one was removed.

        With `owner`, only that release's canary is removed: another release's canary is left
        running and False is returned. Without it (the operator's manual rollback) any canary
        goes, and its owner is recorded in last_rollback.
        """
        removed = False
        with self._locked() as st:
            canary = st.get("canary")
            holder = st.get("canary_owner")
            if canary is not None and (owner is None or holder in (None, owner)):
                if not pid_alive(canary.get("pid"), canary.get("pid_start_ticks")):
                    # a dead canary is already out of the rotation (the router's health checks);
                    # swapping the config at once would cancel the retries of requests that just
                    # met it, and they would come back 502: let those retries finish first
                    time.sleep(caddy.SETTLE_S)
                st["canary"], st["canary_weight_pct"], st["canary_owner"] = None, 0, None
                if st.get("stable"):
                    self._ensure_router(st)
                    self._apply(st)
                st["retired"].append(canary)
                st["last_rollback"] = {
                    "reason": reason,
                    "version": canary["version"],
                    "canary_owner": holder,
                    "by": owner,
                    "at_unix": time.time(),
                }
                self._write(st)
                self._event("rollback", version=canary["version"], reason=reason, canary_owner=holder, by=owner)
                removed = True
            self._finish_retirements(st)
        return removed

    def canary_owner(self) -> dict[str, Any] | None:
        """The release (dag_id/run_id) that started the running canary, if any."""
        st = self._read()
        return st.get("canary_owner") if st.get("canary") else None

    def record(self, key: str) -> Any:
        """A release's bookkeeping entry kept with the serving state (e.g. a promotion's pending alias)."""
        return self._read().get("records", {}).get(key)

    def set_record(self, key: str, value: Any) -> None:
        """Write (or, with None, delete) a bookkeeping entry under the state lock, atomically."""
        with self._locked() as st:
            records = st.setdefault("records", {})
            if value is None:
                records.pop(key, None)
            else:
                records[key] = value

    def backend_alive(self, b: Backend) -> bool:
        """True if the backend's server process still runs (the very process that was started)."""
        return self._backend_alive(b)

    def router_caddy_pid(self) -> int | None:
        """The pid of the Caddy process serving now (its holder restarts it under a new pid)."""
        return router.caddy_pid(self.state_dir)

    def health(self) -> ServingHealth:
        """Which recorded processes run now: a read of state.json and /proc, no lock, no HTTP."""
        st = self._read()
        stable, canary = Backend.from_dict(st.get("stable")), Backend.from_dict(st.get("canary"))
        router = st.get("router")
        return ServingHealth(
            stable=None if stable is None else self._backend_alive(stable),
            canary=None if canary is None else self._backend_alive(canary),
            router=None if not router else pid_alive(router["pid"], router.get("pid_start_ticks")),
        )

    def restore(self) -> tuple[str, ...]:
        """Restart a dead stable (same model, same port if free) and a dead router from state.json.

        Never a canary: a canary that died has failed, and its release's analysis rolls it back
        (the router's health checks keep traffic off it meanwhile). Under the state lock, so a
        release task and the supervisor never restore the same thing twice.
        """
        done: list[str] = []
        with self._locked() as st:
            stable = Backend.from_dict(st.get("stable"))
            if stable is not None and not self._backend_alive(stable):
                model = ModelRef(stable.name, stable.version, Path(stable.model_path), stable.image_digest)
                new = self._start_backend(model, "stable", 60.0, port=stable.port)
                st["stable"] = new.to_dict()
                self._write(st)
                done.append(f"stable v{stable.version} (pid {stable.pid} -> {new.pid})")
                if st.get("router") and pid_alive(st["router"]["pid"], st["router"].get("pid_start_ticks")):
                    self._apply(st)
            router = st.get("router")
            if stable is not None and (not router or not pid_alive(router["pid"], router.get("pid_start_ticks"))):
                self._ensure_router(st)
                done.append(f"router (caddy pid {router['pid'] if router else None} -> {st['router']['pid']})")
            if done:
                self._event("restored", what=done)
        return tuple(done)

    def stop_all(self) -> None:
        with self._locked() as st:
            for key in ("canary", "stable"):
                if st.get(key):
                    st["retired"].append(st[key])
                st[key] = None
            st["canary_weight_pct"], st["canary_owner"] = 0, None
            router = st.get("router")
            if router:
                stop_process_group(router["pid"], router.get("pid_start_ticks"), grace_s=5.0)
                st["router"] = None
            self._finish_retirements(st, drain=False)
            self._event("stopped_all")

    # ---- internals ---------------------------------------------------------------------------

    def _backend_alive(self, b: Backend) -> bool:
        return pid_alive(b.pid, b.pid_start_ticks)

    @contextlib.contextmanager
    def _stopped_on_error(self, b: Backend) -> Iterator[None]:
        """A server started for a change that then fails (router, config apply) is stopped, never orphaned."""
        try:
            yield
        except BaseException:
            stop_process_group(b.pid, b.pid_start_ticks, grace_s=2.0)
            raise

    def _apply(self, st: dict[str, Any]) -> None:
        """Push the split from state to Caddy, the config file first (router.write_config says why)."""
        r = st["router"]
        split = self._split(st)
        router.write_config(self.state_dir, caddy.caddy_config(r["http_port"], r["admin_port"], split))
        caddy.apply_split(r["admin_port"], split)

    def _split(self, st: dict[str, Any]) -> caddy.Split:
        stable = st["stable"]
        canary = st.get("canary")
        return caddy.split_for(
            f"127.0.0.1:{stable['port']}",
            f"127.0.0.1:{canary['port']}" if canary else None,
            int(st.get("canary_weight_pct", 0)),
        )

    def _ensure_router(self, st: dict[str, Any]) -> None:
        old = router.RouterProcess.from_dict(st.get("router"))
        if old is not None and old.alive():
            return
        if not st.get("stable"):
            raise DeployError("the router needs a stable backend to route to")
        # a restore takes the old port back, so the router's URL stays; the holder binds both ports
        # and reads them back (0: the kernel picks), so no port is probed and handed on to a race
        http_port = old.http_port if old else 0
        started = router.start(
            self.state_dir,
            caddy.caddy_config(http_port, 0, self._split(st)),
            http_port=http_port,
            caddy_executable=self.caddy_executable,
        )
        st["router"] = started.to_dict()
        self._write(st)
        # the file with the ports the holder bound, for anyone reading it (the holder maps them anyway)
        router.write_config(self.state_dir, caddy.caddy_config(started.http_port, started.admin_port, self._split(st)))
        self._event("router_started", pid=started.pid, http_port=started.http_port, admin_port=started.admin_port)

    def _start_backend(self, model: ModelRef, role: str, ready_timeout_s: float, port: int | None = None) -> Backend:
        return model_server.start(
            model,
            role,
            state_dir=self.state_dir,
            python_executable=self.python_executable,
            project_root=self.project_root,
            drain_timeout_s=self.drain_timeout_s,
            ready_timeout_s=ready_timeout_s,
            port=port,
        )

    def _finish_retirements(self, st: dict[str, Any], drain: bool = True) -> None:
        """Drain (no request in flight) and stop every retired backend; survives being re-run."""
        for raw in list(st.get("retired", [])):
            b = Backend.from_dict(raw)
            assert b is not None
            if drain:
                model_server.drain(b, self.drain_timeout_s)
            stop_process_group(b.pid, b.pid_start_ticks, grace_s=self.drain_timeout_s + 5.0)
            st["retired"].remove(raw)
            self._write(st)
            self._event("stopped", version=b.version, pid=b.pid)
