"""A Kubernetes API stand-in for the serving target: kmock over real HTTP, plus server-side apply and a
Deployment controller.

kmock stores objects as sent and merges PATCH bodies; a real API server treats a PATCH of type
``application/apply-patch+yaml`` as server-side apply: create when absent, else the applier's fields
replace its earlier ones. The stand-in does that for our single field manager (keeping status, uid,
creationTimestamp, and ``spec.replicas``, which the HPA owns in a cluster), bumps
``metadata.generation`` when the spec changes, and records every applied body (``applied``).

The controller (a task on the server's loop, 20 Hz) plays the Deployment controller, the HPA and the
kubelet: a Deployment gets ``replicas`` = its HPA's minReplicas (else 1), one Running pod per
replica with the pod template's labels, and an available status for its generation. An image whose
digest (or ``<deployment>@<digest>``) is in ``faults`` never gets ready: its new pod waits with the
given reason (ImagePullBackOff, ...) or stays Pending with the scheduler's message (reason
``Unschedulable``); the old pods stay, as a ``maxUnavailable: 0`` rollout leaves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.k8s_standin import write_kubeconfig

NAMESPACE = "mlops-serving"
RESOURCES = {
    "v1/pods": "Pod",
    "v1/services": "Service",
    "apps/v1/deployments": "Deployment",
    "autoscaling/v2/horizontalpodautoscalers": "HorizontalPodAutoscaler",
    "policy/v1/poddisruptionbudgets": "PodDisruptionBudget",
    "networking.k8s.io/v1/networkpolicies": "NetworkPolicy",
    "gateway.networking.k8s.io/v1/httproutes": "HTTPRoute",
}


def _digest(image: str) -> str:
    return image.rpartition("@")[2]


@contextlib.contextmanager
def serving_standin(workdir: Path, namespace: str = NAMESPACE) -> Iterator[SimpleNamespace]:
    import aiohttp.web
    import kmock
    from kmock._internal.apps import Server
    from kmock._internal.references import resource

    applied: list[dict[str, Any]] = []
    calls: list[tuple[str, str]] = []  # (method, path) of every API request, in order
    faults: dict[str, tuple[str, str]] = {}
    counter = {"rv": 0}
    pods_res = resource(group="", version="v1", plural="pods")
    deploy_res = resource(group="apps", version="v1", plural="deployments")
    hpa_res = resource(group="autoscaling", version="v2", plural="horizontalpodautoscalers")

    def live(handler: Any, res: Any) -> list[tuple[tuple[Any, str, str], Any]]:
        return [(k, o) for k, o in list(handler.objects.items()) if k[0] == res and not o.deleted]

    class ApiServer(kmock.KubernetesEmulator):  # type: ignore[misc]
        async def _handle(self, request: Any) -> Any:
            ctype = str(request.headers.get("Content-Type", ""))
            calls.append((str(getattr(request.method, "value", request.method)).upper(), request.url.path))
            if request.method == "PATCH" and ctype.startswith("application/apply-patch") and request.name:
                return await self._apply(request)
            return await super()._handle(request)

        async def _apply(self, request: Any) -> Any:
            body = copy.deepcopy(request.data)
            applied.append(copy.deepcopy(body))
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                counter["rv"] += 1
                old = self.objects[key].raw if key in self.objects and not self.objects[key].deleted else None
                meta = body.setdefault("metadata", {})
                meta["resourceVersion"] = str(counter["rv"])
                if old is None:
                    meta.update(uid=f"uid-{counter['rv']}", generation=1, creationTimestamp=time.strftime("%FT%TZ"))
                    if key in self.objects:
                        self.objects[key].create(body)
                    else:
                        self.objects[key] = body
                    event = "ADDED"
                else:
                    om = old.get("metadata") or {}
                    spec = body.get("spec")
                    if isinstance(spec, dict) and "replicas" not in spec and "replicas" in (old.get("spec") or {}):
                        spec["replicas"] = old["spec"]["replicas"]  # owned by the HPA's field manager
                    changed = body.get("spec") != old.get("spec")
                    meta.update(uid=om.get("uid"), creationTimestamp=om.get("creationTimestamp"),
                                generation=int(om.get("generation", 1)) + (1 if changed else 0))  # fmt: skip
                    if "status" in old:
                        body["status"] = old["status"]
                    self.objects[key].create(body)  # a new version replacing the whole object
                    event = "MODIFIED"
                raw = self.objects[key].raw
                await self._buses[request.resource].put({"type": event, "object": raw})
            return aiohttp.web.json_response(raw, status=201 if event == "ADDED" else 200)

    def reconcile(handler: Any) -> None:
        hpas = {k[2]: o.raw for k, o in live(handler, hpa_res)}
        wanted_pods: set[str] = set()
        for (_res, ns, name), obj in live(handler, deploy_res):
            dep = obj.raw
            gen = int(dep["metadata"].get("generation", 1))
            n = int((hpas.get(name) or {}).get("spec", {}).get("minReplicas") or dep["spec"].get("replicas") or 1)
            if dep["spec"].get("replicas") != n:
                obj.patch({"spec": {"replicas": n}})  # the HPA scales (generation unchanged: a scale)
            tpl = dep["spec"]["template"]
            image = tpl["spec"]["containers"][0]["image"]
            fault = faults.get(f"{name}@{_digest(image)}") or faults.get(_digest(image))
            old_pods = [o.raw for k, o in live(handler, pods_res)
                        if k[2].startswith(f"{name}-g") and not k[2].startswith(f"{name}-g{gen}-")]  # fmt: skip
            old_ready = sum(1 for p in old_pods if p["status"].get("phase") == "Running")
            if fault is None:
                for i in range(n):
                    pod = f"{name}-g{gen}-{i}"
                    wanted_pods.add(pod)
                    _put_pod(handler, (pods_res, ns, pod), tpl, image, "Running", None)
                status = {"observedGeneration": gen, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                          "availableReplicas": n}  # fmt: skip
            else:
                pod = f"{name}-g{gen}-0"
                wanted_pods.add(pod)
                _put_pod(handler, (pods_res, ns, pod), tpl, image, "Pending", fault)
                for p in old_pods:  # maxUnavailable 0: the old pods keep serving
                    wanted_pods.add(p["metadata"]["name"])
                status = {"observedGeneration": gen, "replicas": len(old_pods) + 1, "updatedReplicas": 1,
                          "readyReplicas": old_ready, "availableReplicas": old_ready}  # fmt: skip
            if dep.get("status") != status:
                obj.patch({"status": None})
                obj.patch({"status": status})
        for (_r, _ns, pod), o in live(handler, pods_res):
            if pod not in wanted_pods:
                o.delete()  # garbage collection of a deleted Deployment's or an old ReplicaSet's pods

    state: dict[str, Any] = {}
    ready = threading.Event()

    async def serve() -> None:
        async with ApiServer() as handler, Server(handler) as server:
            for path, kind in RESOURCES.items():
                handler.resources[path] = kmock.ResourceInfo(kind=kind, namespaced=True)
            stop = asyncio.Event()
            state.update(url=str(server.url).rstrip("/"), loop=asyncio.get_running_loop(), stop=stop, handler=handler)
            ready.set()
            while not stop.is_set():
                async with handler._lock:
                    reconcile(handler)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    if not ready.wait(15):
        raise RuntimeError("kmock did not start within 15 s")
    kubeconfig = write_kubeconfig(workdir, state["url"], namespace, user="release")
    try:
        yield SimpleNamespace(
            url=state["url"],
            handler=state["handler"],
            applied=applied,
            calls=calls,
            faults=faults,
            kubeconfig=str(kubeconfig),
        )
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


def _put_pod(
    handler: Any, key: Any, tpl: dict[str, Any], image: str, phase: str, fault: tuple[str, str] | None
) -> None:
    # kmock's ObjectsArray is no Mapping: no .get()
    existing = handler.objects[key] if key in handler.objects else None  # noqa: SIM401
    if existing is not None and not existing.deleted and existing.raw["status"].get("phase") == phase:
        return
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "PodScheduled", "status": "True"}]}
    container: dict[str, Any] = {"name": "server", "image": image, "ready": phase == "Running", "restartCount": 0}
    if fault is None:
        container["state"] = {"running": {"startedAt": time.strftime("%FT%TZ")}}
    elif fault[0] == "Unschedulable":
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": fault[0], "message": fault[1]}]
        container = {}
    else:
        container["state"] = {"waiting": {"reason": fault[0], "message": fault[1]}}
    if container:
        status["containerStatuses"] = [container]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": key[2], "namespace": key[1], "labels": dict(tpl["metadata"]["labels"])},
        "spec": copy.deepcopy(tpl["spec"]),
        "status": status,
    }
    if key in handler.objects:
        handler.objects[key].create(pod)
    else:
        handler.objects[key] = pod


def live_objects(standin: SimpleNamespace, plural: str) -> dict[str, dict[str, Any]]:
    """name -> object of one resource (e.g. 'deployments') as the stand-in holds it now."""
    return {
        name: obj.raw
        for (res, _ns, name), obj in list(standin.handler.objects.items())
        if res.plural == plural and not obj.deleted
    }
