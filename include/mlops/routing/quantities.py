"""Kubernetes resource quantities <-> integers in the units the router counts in.

CPU is counted in millicores, memory in MiB, so arithmetic stays exact and fast.
"""

from __future__ import annotations

from decimal import Decimal

from include.mlops.errors import PlacementError


def parse_quantity(text: str | int | float) -> Decimal:
    """Parse a k8s quantity ("500m", "16Gi", "2", "1e3") into its plain value.

    The Kubernetes client's own parser, so "16Gi" means here what it means to the API server.
    Imported on first use: the client package takes ~1 s to import, and most callers (the DAG
    files, the trainer's environment, which lacks it) never parse a quantity.
    """
    from kubernetes.utils.quantity import parse_quantity as k8s_parse_quantity

    try:
        return Decimal(k8s_parse_quantity(text))
    except (ValueError, TypeError) as exc:
        raise PlacementError(f"not a Kubernetes quantity: {text!r} (expected e.g. '500m', '16Gi', '2')") from exc


def cpu_millicores(text: str | int | float) -> int:
    return int(parse_quantity(text) * 1000)


def memory_mib(text: str | int | float) -> int:
    return int(parse_quantity(text) / 2**20)


def format_cpu(millicores: int) -> str:
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def format_memory(mib: int) -> str:
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"
