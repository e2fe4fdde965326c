"""CLI: apply airflow_settings.yaml to the Airflow metadata DB (plain Airflow; Astro does it itself).

Usage: python -m include.mlops.settings.apply [PATH]  (exit 2 and nothing applied on a malformed file)
"""

from __future__ import annotations

import sys

from include.mlops.errors import SettingsError
from include.mlops.settings.airflow_settings import apply_airflow_settings, load_airflow_settings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "airflow_settings.yaml"
    try:
        settings = load_airflow_settings(path)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        print("nothing was applied", file=sys.stderr)
        return 2
    report = apply_airflow_settings(settings)
    print(
        f"airflow settings from {path}: {len(report.created)} created, "
        f"{len(report.updated)} updated, {len(report.unchanged)} unchanged"
    )
    for label in report.created + report.updated:
        print(f"  changed {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
