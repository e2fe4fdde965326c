"""Kubernetes resource quantities <-> integers in the units the router counts in.

CPU is counted in millicores, memory in MiB, so arithmetic stays exact and fast.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from include.mlops.errors import PlacementError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
            "P": Decimal(10**15), "E": Decimal(10**18)}  # fmt: skip


def parse_quantity(text: str | int | float) -> Decimal:
    """Parse a k8s quantity ("500m", "16Gi", "2", "1e3") into its plain value."""
    s = str(text).strip()
    try:
        for suffix, factor in _BINARY.items():
            if s.endswith(suffix):
                return Decimal(s[: -len(suffix)]) * factor
        if s and s[-1] in "numkMGTPE":
            return Decimal(s[:-1]) * _DECIMAL[s[-1]]
        return Decimal(s)
    except (InvalidOperation, IndexError) as exc:
        raise PlacementError(f"not a Kubernetes quantity: {text!r} (expected e.g. '500m', '16Gi', '2')") from exc


def cpu_millicores(text: str | int | float) -> int:
    return int(parse_quantity(text) * 1000)


def memory_mib(text: str | int | float) -> int:
    return int(parse_quantity(text) / 2**20)


def format_cpu(millicores: int) -> str:
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def format_memory(mib: int) -> str:
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"
