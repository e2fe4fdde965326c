"""A Kubernetes API stand-in (kmock's KubernetesEmulator over real HTTP) with a kubelet stand-in.

The kubelet stand-in (a thread talking to the same API) runs each created pod's command with the
training interpreter, reports Running then Succeeded/Failed with the real exit code, and serves the
output at the pod's ``log`` subresource. ``kubernetes_standin`` yields the API URL, the kubelet, the
pod manifests as created, and the ``kubernetes_default`` connection (as AIRFLOW_CONN_* JSON) whose
kubeconfig points at it; used by the pod launcher's tests and the retrain DAG's e2e test.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from include.mlops.training.runner import repo_root, training_environment, training_python

NAMESPACE = "ml-train"


class Kubelet:
    """Runs created pods' commands locally (the image's `python` is the training interpreter)."""

    def __init__(self, api_url: str, python: str, namespace: str = NAMESPACE) -> None:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = api_url
        self.api = client.CoreV1Api(client.ApiClient(cfg))
        self.python = python
        self.namespace = namespace
        self.schedulable = True  # False: pods stay Pending (no node fits)
        self.logs: dict[str, bytes] = {}
        self.finished: dict[str, threading.Event] = {}
        self.exit_codes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        seen: set[str] = set()
        while not self._stop.wait(0.1):
            if not self.schedulable:
                continue
            for pod in self.api.list_namespaced_pod(self.namespace).items:
                if pod.metadata.name not in seen:
                    seen.add(pod.metadata.name)
                    threading.Thread(target=self._run, args=(pod,), daemon=True).start()

    def _status(self, name: str, phase: str, state: dict[str, Any]) -> None:
        scheduled = {"type": "PodScheduled", "status": "True"}
        status = {
            "phase": phase,
            "conditions": [scheduled],
            "containerStatuses": [
                {"name": "base", "image": "trainer", "imageID": "", "ready": phase == "Running", "restartCount": 0}
                | {"state": state}
            ],
        }
        self.api.patch_namespaced_pod(name, self.namespace, {"status": status})

    def _run(self, pod: Any) -> None:
        name = pod.metadata.name
        self.finished[name] = threading.Event()
        container = pod.spec.containers[0]
        cmd = [*(container.command or []), *(container.args or [])]
        cmd = [self.python if i == 0 and part == "python" else part for i, part in enumerate(cmd)]
        now = datetime.now(UTC).isoformat()
        self._status(name, "Running", {"running": {"startedAt": now}})
        env = training_environment({**{e.name: e.value for e in container.env or []}, "PATH": "/usr/bin:/bin"})
        try:
            proc = subprocess.run(
                cmd, cwd=repo_root(), env=env, capture_output=True, timeout=90, check=False, stdin=subprocess.DEVNULL
            )
            code, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, out = 137, (exc.stdout or b"") + b"killed after 90 s"
        self.logs[name] = out
        self.exit_codes[name] = code
        end = datetime.now(UTC).isoformat()
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": end}
        self._status(name, "Succeeded" if code == 0 else "Failed", {"terminated": terminated})
        self.finished[name].set()

    async def serve_log(self, request: Any) -> bytes:
        """GET .../pods/<name>/log: with follow=true, streams until the container exits (here: at once after)."""
        name = request.url.path.rstrip("/").split("/")[-2]
        if name not in self.finished:
            return b""  # the container never started: nothing to show or to follow
        follow = str(request.params.get("follow", "false")).lower() == "true"
        deadline = time.monotonic() + 90
        while follow and time.monotonic() < deadline and not self._is_finished(name):
            await asyncio.sleep(0.05)
        return self.logs.get(name, b"")

    def _is_finished(self, name: str) -> bool:
        ev = self.finished.get(name)
        return ev is not None and ev.is_set()


@contextlib.contextmanager
def kubernetes_standin(workdir: Path, namespace: str = NAMESPACE) -> Iterator[SimpleNamespace]:
    """API stand-in + kubelet stand-in, and a kubeconfig/connection pointing at them."""
    import kmock
    from kmock._internal.apps import Server

    created: list[dict[str, Any]] = []

    class ApiServer(kmock.KubernetesEmulator):  # type: ignore[misc]
        async def _handle(self, request: Any) -> Any:
            # the API server defaults status.phase on create (kmock stores the body as sent)
            if request.action == kmock.action.CREATE and request.url.path.endswith("/pods"):
                created.append(copy.deepcopy(request.data))
                request.data.setdefault("status", {"phase": "Pending"})
            return await super()._handle(request)

    state: dict[str, Any] = {}
    ready = threading.Event()
    kubelet_box: dict[str, Kubelet] = {}

    async def serve_log(request: Any) -> bytes:
        return await kubelet_box["k"].serve_log(request)

    async def serve() -> None:
        async with ApiServer() as handler, Server(handler) as server:
            handler.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
            handler.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True)
            handler["get", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] << serve_log
            stop = asyncio.Event()
            state.update(url=str(server.url).rstrip("/"), loop=asyncio.get_running_loop(), stop=stop, handler=handler)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    if not ready.wait(15):
        raise RuntimeError("kmock did not start within 15 s")
    kubeconfig = write_kubeconfig(workdir, state["url"], namespace, user="airflow")
    conn = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig), "namespace": namespace}}
    kubelet = Kubelet(state["url"], training_python(), namespace)
    kubelet_box["k"] = kubelet
    kubelet.start()
    try:
        yield SimpleNamespace(
            url=state["url"], kubelet=kubelet, created=created, handler=state["handler"], conn_json=json.dumps(conn)
        )
    finally:
        kubelet.stop()
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


def write_kubeconfig(workdir: Path, server: str, namespace: str, *, user: str) -> Path:
    """A kubeconfig whose current context is the stand-in at `server`, in `namespace`."""
    kubeconfig = workdir / "kubeconfig.yaml"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": server}}],
                "users": [{"name": user, "user": {"token": "test-token"}}],
                "contexts": [
                    {"name": "standin", "context": {"cluster": "standin", "user": user, "namespace": namespace}}
                ],
                "current-context": "standin",
            }
        )
    )
    return kubeconfig


def live_pods(standin: SimpleNamespace) -> list[Any]:
    return [
        obj for (res, _ns, _name), obj in standin.handler.objects.items() if res.plural == "pods" and not obj.deleted
    ]


# Pod Security Standards, "restricted" profile (Kubernetes v1.30), as the admission controller checks
# a pod spec; https://kubernetes.io/docs/concepts/security/pod-security-standards/
_RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}


def restricted_profile_violations(manifest: dict[str, Any]) -> list[str]:
    """Every rule of the "restricted" Pod Security profile the pod manifest breaks (empty: admitted)."""
    spec = manifest["spec"]
    pod_sc = spec.get("securityContext") or {}
    out: list[str] = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"spec.{key} is true")
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= _RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {vol['name']} uses {sorted(kinds - _RESTRICTED_VOLUME_TYPES)}")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod hostProcess")
    for sysctl in pod_sc.get("sysctls") or []:
        out.append(f"sysctl {sysctl.get('name')} set")
    if pod_sc.get("runAsUser") == 0:
        out.append("pod runAsUser is 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod seccompProfile {pod_seccomp}")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = f"container {c.get('name')}"
        if sc.get("privileged"):
            out.append(f"{name} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name} allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name} does not drop ALL capabilities")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name} adds capabilities {caps.get('add')}")
        if set(caps.get("add") or []) - _BASELINE_CAPABILITIES:
            out.append(f"{name} adds non-baseline capabilities")
        if not (sc.get("runAsNonRoot") is True or (pod_sc.get("runAsNonRoot") is True and "runAsNonRoot" not in sc)):
            out.append(f"{name} runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{name} runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name} seccompProfile is {seccomp!r}, not RuntimeDefault/Localhost")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            out.append(f"{name} uses a hostPort")
        if (sc.get("procMount") or "Default") != "Default":
            out.append(f"{name} procMount {sc.get('procMount')}")
    return out
