"""The stack's kustomize manifests (deploy/k8s/): both overlays render with `kubectl kustomize`, every
object validates against the Kubernetes 1.30 and 1.32 schemas, pods meet Pod Security "restricted",
and the workers' Role grants what the serving target calls (no more)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from include.mlops.deploy import k8s_manifests as km
from tests.k8s_standin import restricted_profile_violations
from tests.services import service_missing

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ("small", "production")


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        service_missing("kubectl (kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate_against_kubernetes_schemas_and_pods_are_restricted(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Role", "RoleBinding", "Deployment", "Service", "NetworkPolicy", "ConfigMap"} <= kinds
    for doc in docs:
        for version in ("1.30", "1.32"):
            kubernetes_validate.validate(doc, version, strict=True)
        if doc["kind"] == "Deployment":
            assert restricted_profile_violations({"spec": doc["spec"]["template"]["spec"]}) == []
            # the kustomize images entry replaced the bare name
            assert doc["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/mlflow/mlflow:v3.17.2"


def test_overlays_differ_in_mlflow_resources() -> None:
    def mlflow_cpu(overlay: str) -> str:
        dep = next(d for d in render(overlay) if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
        return str(dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])

    assert (mlflow_cpu("small"), mlflow_cpu("production")) == ("500m", "2")


def test_release_role_grants_exactly_what_the_serving_target_calls() -> None:
    role = next(d for d in render("small") if d["kind"] == "Role" and d["metadata"]["name"] == "mlops-release")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    called = set()
    for path in km.PATHS.values():
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        called.add((group, parts[-1]))
    assert granted == called
    assert role["metadata"]["namespace"] == "mlops-serving"
    verbs = {r["resources"][0]: set(r["verbs"]) for r in role["rules"]}
    assert verbs["pods"] == {"list"}
    assert verbs["deployments"] == {"get", "create", "patch", "delete"}  # apply = create + patch; no update/list
