"""The `kubernetes` profile's deploy target: a Deployment per track behind one Gateway API HTTPRoute.

Every object is written by server-side apply (field manager ``mlops-release``, forced), so a move
repeated after a worker died converges to the same objects. The release's state is in the cluster:
version, digest, owner and start time in the Deployments' annotations, the split in the HTTPRoute's
backendRefs weights, bookkeeping records in the HTTPRoute's annotations. No local file.

Canary analysis: without Prometheus the default sample source reads each track's ``/samples``
through its Service URL (Backend.url), i.e. from whichever pod the Service picks per fetch; the
worker must run in the cluster (the NetworkPolicy admits ``workers_namespace``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.deploy import k8s_api
from include.mlops.deploy import k8s_manifests as km
from include.mlops.deploy.k8s_api import KubernetesServingConfig
from include.mlops.deploy.target import Backend, ModelRef, ServingHealth, ServingState, refuse_foreign_canary
from include.mlops.errors import BackendNotReady, DeployError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

A = km.PREFIX  # annotation prefix


class KubernetesTarget:
    """DeployTarget over the Kubernetes API; every move converges when repeated."""

    def __init__(
        self,
        model_name: str,
        *,
        registry: str,
        config: KubernetesServingConfig | None = None,
        resources: km.ServingResources | None = None,
        client: ApiClient | None = None,
        poll_s: float = 0.5,
        update_timeout_s: float = 300.0,
    ) -> None:
        if not registry:
            raise DeployError(
                "the kubernetes profile pulls the model images from a registry: connection docker_default "
                "needs extra.registry (the registry build_image pushes to)"
            )
        self.config = config or KubernetesServingConfig()
        self.scope = km.Scope(
            model_name=model_name,
            namespace=self.config.namespace,
            registry=registry,
            gateway=self.config.gateway,
            workers_namespace=self.config.workers_namespace,
        )
        self.model_name = model_name
        self.resources = resources or km.ServingResources()
        self.poll_s = poll_s
        self.update_timeout_s = update_timeout_s
        self.api = k8s_api.KubeRest(self.config.namespace, client, self.config.kube_config)

    # ---- state ---------------------------------------------------------------------------------

    def _deployment(self, track: str) -> dict[str, Any] | None:
        return self.api.get("Deployment", self.scope.name(track))

    def _route(self) -> dict[str, Any] | None:
        return self.api.get("HTTPRoute", self.scope.route_name)

    @staticmethod
    def _ann(obj: dict[str, Any] | None) -> dict[str, str]:
        return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})

    @staticmethod
    def _available(dep: dict[str, Any] | None) -> bool:
        """The Deployment's current spec is rolled out: every wanted pod updated and available."""
        if not dep:
            return False
        st, meta = dep.get("status") or {}, dep.get("metadata") or {}
        want = int((dep.get("spec") or {}).get("replicas") or 1)
        return (
            int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 1)
            and int(st.get("updatedReplicas") or 0) >= want
            and int(st.get("availableReplicas") or 0) >= want
            and int(st.get("replicas") or 0) <= int(st.get("updatedReplicas") or 0)
        )

    def _backend(self, dep: dict[str, Any] | None, track: str) -> Backend | None:
        if dep is None:
            return None
        a = self._ann(dep)
        return Backend(
            name=self.model_name,
            version=a.get(f"{A}/version", "?"),
            url=f"http://{self.scope.name(track)}.{self.scope.namespace}.svc.cluster.local:{km.CONTAINER_PORT}",
            model_path=a.get(f"{A}/model-path", ""),
            image_digest=a.get(f"{A}/image-digest"),
            port=km.CONTAINER_PORT,
            log_path=f"kubectl -n {self.scope.namespace} logs deployment/{self.scope.name(track)}",
            started_at_unix=float(a.get(f"{A}/started-at", "0")),
        )

    def _canary_weight(self, route: dict[str, Any] | None) -> int:
        return km.route_weights(route, self.scope).get(self.scope.name("canary"), 0)

    # ---- apply helpers -------------------------------------------------------------------------

    def _apply_route(self, canary_weight_pct: int | None, extra: dict[str, str | None] | None = None) -> None:
        """The split; the route's record annotations are carried over (apply would drop them)."""
        ann = {k: v for k, v in self._ann(self._route()).items() if k.startswith(f"{A}/")}
        for k, v in (extra or {}).items():
            if v is None:
                ann.pop(k, None)
            else:
                ann[k] = v
        self.api.apply(km.http_route(self.scope, canary_weight_pct, ann))

    def _apply_track(self, track: str, model: ModelRef, annotations: dict[str, str]) -> None:
        ann = {
            f"{A}/version": str(model.version),
            f"{A}/model-path": str(model.model_path),
            f"{A}/image-digest": model.image_digest or "",
            **annotations,
        }
        res = self.resources
        self.api.apply(km.network_policy(self.scope))
        self.api.apply(km.service(self.scope, track))
        self.api.apply(km.deployment(self.scope, track, digest=model.image_digest or "", version=str(model.version),
                                 annotations=ann, res=res))  # fmt: skip
        self.api.apply(km.autoscaler(self.scope, track, res))
        self.api.apply(km.disruption_budget(self.scope, track))

    def _delete_track(self, track: str) -> None:
        for kind in km.TRACK_KINDS:
            self.api.delete(kind, self.scope.name(track))

    def _pod_reasons(self, track: str) -> list[str]:
        """Why a track's pods are not ready: container waiting/terminated reasons, scheduler messages."""
        want = self.scope.selector(track)
        selector = ",".join(f"{k}={v}" for k, v in want.items())
        found = self.api.call("GET", self.api.path("Pod"), query=[("labelSelector", selector)]) or {}
        out: list[str] = []
        for pod in found.get("items") or []:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if any(labels.get(k) != v for k, v in want.items()):
                continue  # the list is filtered again here: selectors are the server's, names ours
            st, name = pod.get("status") or {}, pod["metadata"]["name"]
            for c in st.get("containerStatuses") or []:
                for kind in ("waiting", "terminated"):
                    s = (c.get("state") or {}).get(kind) or (c.get("lastState") or {}).get(kind)
                    if s and s.get("reason") not in (None, "Completed"):
                        out.append(f"pod {name}: {s['reason']}" + (f" ({s['message']})" if s.get("message") else ""))
                        break
            for cond in st.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    out.append(f"pod {name}: {st.get('phase', 'Pending')}, {cond.get('reason')}: {cond.get('message')}")
        return out

    def _wait_available(self, track: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._available(self._deployment(track)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)

    def _not_ready(self, track: str, model: ModelRef, timeout_s: float) -> str:
        reasons = self._pod_reasons(track)
        return (
            f"{track} {self.model_name} v{model.version} ({self.scope.name(track)}) not available within "
            f"{timeout_s:g} s: {'; '.join(reasons) or 'no pod reported a reason'}"
        )

    @staticmethod
    def _model_of(dep: dict[str, Any], name: str) -> ModelRef:
        a = KubernetesTarget._ann(dep)
        return ModelRef(name, a.get(f"{A}/version", "?"), Path(a.get(f"{A}/model-path", "")),
                        a.get(f"{A}/image-digest") or None)  # fmt: skip

    # ---- public API ----------------------------------------------------------------------------

    def status(self) -> ServingState:
        route = self._route()
        canary = self._deployment("canary")
        return ServingState(
            router_url=self.config.gateway_url,
            stable=self._backend(self._deployment("stable"), "stable"),
            canary=self._backend(canary, "canary"),
            canary_weight_pct=self._canary_weight(route) if canary else 0,
        )

    def ensure_stable(self, model: ModelRef, ready_timeout_s: float = 60.0) -> Backend:
        canary = self._deployment("canary")
        if canary is not None:
            raise DeployError(
                f"cannot replace the stable with version {model.version} while canary version "
                f"{self._ann(canary).get(f'{A}/version')} runs; promote or roll back the canary first"
            )
        old = self._deployment("stable")
        started = self._ann(old).get(f"{A}/started-at") if old else None
        same = old is not None and self._ann(old).get(f"{A}/image-digest") == model.image_digest
        self._apply_track("stable", model, {f"{A}/started-at": started if same and started else f"{time.time():.3f}"})
        if not self._wait_available("stable", ready_timeout_s):
            msg = self._not_ready("stable", model, ready_timeout_s)
            if old is not None and not same:  # back to the old spec: its pods never stopped (maxUnavailable 0)
                prev = self._model_of(old, self.model_name)
                self._apply_track("stable", prev, {f"{A}/started-at": self._ann(old).get(f"{A}/started-at", "0")})
                msg += f"; the stable stays at v{prev.version}"
            raise BackendNotReady(msg)
        self._apply_route(None)
        backend = self._backend(self._deployment("stable"), "stable")
        assert backend is not None
        return backend

    def start_canary(
        self, model: ModelRef, ready_timeout_s: float = 60.0, owner: dict[str, Any] | None = None
    ) -> Backend:
        if self._deployment("stable") is None:
            raise DeployError("no stable deployment to canary against; run ensure_stable first")
        canary = self._deployment("canary")
        started = self._ann(canary).get(f"{A}/started-at") if canary else None
        ann = {f"{A}/owner": km.dumps(owner), f"{A}/started-at": started or f"{time.time():.3f}"}
        if canary is None:
            # claim the canary slot with a create, which the API server refuses (409) to all but one of
            # two releases racing here; apply alone would let the last writer silently take it over
            claim = km.deployment(
                self.scope, "canary", digest=model.image_digest or "", version=str(model.version),
                annotations={f"{A}/version": str(model.version), **ann}, res=self.resources,
            )  # fmt: skip
            if not self.api.create(claim):
                canary = self._deployment("canary")
        if canary is not None:
            self._check_canary_owner(canary, model, owner)
        self._apply_track("canary", model, ann)
        self._apply_route(self._canary_weight(self._route()) if canary else 0)
        if not self._wait_available("canary", ready_timeout_s):
            msg = self._not_ready("canary", model, ready_timeout_s)
            self._apply_route(None)
            self._delete_track("canary")
            raise BackendNotReady(msg + "; the canary was removed")
        backend = self._backend(self._deployment("canary"), "canary")
        assert backend is not None
        return backend

    def _check_canary_owner(self, canary: dict[str, Any], model: ModelRef, owner: dict[str, Any] | None) -> None:
        a = self._ann(canary)
        holder = json.loads(a.get(f"{A}/owner", "null"))
        refuse_foreign_canary(
            a.get(f"{A}/version"), holder, model, owner=owner, where=f"deployment {self.scope.name('canary')}"
        )

    def set_canary_weight(self, pct: int) -> None:
        if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
            raise DeployError(f"canary weight {pct!r} is not an integer percentage in 0..100")
        if self._deployment("canary") is None:
            raise DeployError(f"no canary running to give {pct} % of the traffic")
        self._apply_route(pct)

    def promote(self) -> Backend:
        """Canary takes 100 %; the stable Deployment rolls to the canary's digest (maxUnavailable 0) and
        is waited for; then the stable takes 100 % again and the canary's objects are deleted."""
        stable, canary = self._deployment("stable"), self._deployment("canary")
        if stable is None:
            raise DeployError("nothing to promote: no stable deployment")
        if canary is not None:
            if not self._available(canary):
                raise DeployError(
                    f"canary {self.scope.name('canary')} is not available; cannot promote it. "
                    f"Pods: {'; '.join(self._pod_reasons('canary')) or 'no pod reported a reason'}"
                )
            model = self._model_of(canary, self.model_name)
            self._apply_route(100)
            ca, sa = self._ann(canary), self._ann(stable)
            # what the stable ran before this promotion (kept across a retry that finds it rolled already)
            previous = sa.get(f"{A}/previous")
            if sa.get(f"{A}/image-digest") != model.image_digest:
                was = self._model_of(stable, self.model_name)
                previous = km.dumps([was.version, str(was.model_path), was.image_digest, sa.get(f"{A}/started-at")])
            ann = {
                f"{A}/started-at": ca.get(f"{A}/started-at", f"{time.time():.3f}"),
                f"{A}/promoted-from": km.dumps(json.loads(ca.get(f"{A}/owner", "null"))),
                **({f"{A}/previous": previous} if previous else {}),
            }
            self._apply_track("stable", model, ann)
            if not self._wait_available("stable", self.update_timeout_s):
                msg = self._not_ready("stable", model, self.update_timeout_s)
                if previous:  # back to the old spec (its pods never stopped: maxUnavailable 0)
                    version, path, digest, started = json.loads(previous)
                    old = ModelRef(self.model_name, version, Path(path), digest)
                    self._apply_track("stable", old, {f"{A}/started-at": started or "0"})
                    msg += f"; the stable stays at v{version}"
                # the canary keeps 100 %: a retried promote continues from here, a rollback returns to the stable
                raise DeployError(msg + "; the canary keeps 100 % until a retried promote or a rollback")
            self._apply_route(None)
            self._delete_track("canary")
        backend = self._backend(self._deployment("stable"), "stable")
        assert backend is not None
        return backend

    def rollback(self, reason: str, owner: dict[str, Any] | None = None) -> bool:
        """Weights first (stable 100 %), then the canary's objects are deleted."""
        canary = self._deployment("canary")
        if canary is None:
            return False
        a = self._ann(canary)
        holder = json.loads(a.get(f"{A}/owner", "null"))
        if owner is not None and holder not in (None, owner):
            return False
        if self._deployment("stable") is not None:
            last = {"reason": reason, "version": a.get(f"{A}/version"), "canary_owner": holder, "by": owner,
                    "at_unix": time.time()}  # fmt: skip
            self._apply_route(None, {f"{A}/last-rollback": km.dumps(last)})
        self._delete_track("canary")
        return True

    def canary_owner(self) -> dict[str, Any] | None:
        canary = self._deployment("canary")
        return json.loads(self._ann(canary).get(f"{A}/owner", "null")) if canary else None

    def record(self, key: str) -> Any:
        raw = self._ann(self._route()).get(f"{A}/record.{key}")
        return json.loads(raw) if raw else None

    def set_record(self, key: str, value: Any) -> None:
        route = self._route()
        if route is None:
            raise DeployError(f"no HTTPRoute {self.scope.route_name} to keep record {key!r} on: no stable yet")
        weight = self._canary_weight(route) if self._deployment("canary") else None
        self._apply_route(weight, {f"{A}/record.{key}": None if value is None else km.dumps(value)})

    def backend_alive(self, b: Backend) -> bool:
        for track in km.TRACKS:
            dep = self._deployment(track)
            if dep is not None and self._ann(dep).get(f"{A}/version") == b.version:
                return int((dep.get("status") or {}).get("availableReplicas") or 0) >= 1
        return False

    def health(self) -> ServingHealth:
        """stable/canary: at least one pod available; router: the HTTPRoute routes to exactly the tracks
        and no gateway that reported on it refused it (Accepted or ResolvedRefs False)."""
        stable, canary = self._deployment("stable"), self._deployment("canary")

        def up(d: dict[str, Any] | None) -> bool | None:
            return None if d is None else int((d.get("status") or {}).get("availableReplicas") or 0) >= 1

        route = self._route()
        wanted = {self.scope.name(t) for t, d in (("stable", stable), ("canary", canary)) if d is not None}
        refused = [
            c
            for parent in ((route or {}).get("status") or {}).get("parents") or []
            for c in parent.get("conditions") or []
            if c.get("type") in ("Accepted", "ResolvedRefs") and c.get("status") == "False"
        ]
        routed = set(km.route_weights(route, self.scope)) == wanted and not refused
        return ServingHealth(stable=up(stable), canary=up(canary), router=None if stable is None else routed)

    def restore(self) -> tuple[str, ...]:
        """Kubernetes restarts pods itself; this re-applies a missing or wrong HTTPRoute."""
        stable = self._deployment("stable")
        if stable is None or self.health().router:
            return ()
        canary = self._deployment("canary")
        self._apply_route(self._canary_weight(self._route()) if canary else None)
        return (f"HTTPRoute {self.scope.route_name}",)

    def stop_all(self) -> None:
        self.api.delete("HTTPRoute", self.scope.route_name)
        for track in ("canary", "stable"):
            self._delete_track(track)
        self.api.delete("NetworkPolicy", self.scope.route_name)
