"""Kubernetes quantities in the router's units (millicores, MiB), parsed by the Kubernetes client."""

from __future__ import annotations

import pytest

from include.mlops.errors import PlacementError
from include.mlops.routing.quantities import cpu_millicores, format_cpu, format_memory, memory_mib


@pytest.mark.parametrize(
    ("text", "millicores"), [("500m", 500), ("2", 2000), ("1.5", 1500), (3, 3000), ("250000u", 250), ("1e1", 10_000)]
)
def test_cpu_in_millicores(text: str | int, millicores: int) -> None:
    assert cpu_millicores(text) == millicores


@pytest.mark.parametrize(
    ("text", "mib"), [("16Gi", 16 * 1024), ("512Mi", 512), ("1G", 953), ("1048576", 1), ("2Ti", 2 * 1024 * 1024)]
)
def test_memory_in_mib_rounding_down(text: str, mib: int) -> None:
    assert memory_mib(text) == mib  # 1G = 10**9 bytes = 953.67 MiB


@pytest.mark.parametrize("bad", ["", "x", "16GiB", "1.2.3", "-"])
def test_a_malformed_quantity_is_a_placement_error_naming_it(bad: str) -> None:
    with pytest.raises(PlacementError, match="not a Kubernetes quantity"):
        cpu_millicores(bad)


def test_formatting_picks_the_whole_unit_where_it_can() -> None:
    assert (format_cpu(2000), format_cpu(1500)) == ("2", "1500m")
    assert (format_memory(2048), format_memory(1536)) == ("2Gi", "1536Mi")
