"""CLI: apply airflow_settings.yaml to the Airflow metadata DB (plain Airflow; Astro does it itself).

Usage: python -m include.mlops.airflow.apply_settings [PATH]  (exit 2, nothing applied, on a malformed file)
"""

from __future__ import annotations

import json
import sys
from typing import Any

from include.mlops.errors import SettingsError
from include.mlops.settings.airflow_settings import AirflowSettings, ApplyReport, load_airflow_settings


def apply_airflow_settings(settings: AirflowSettings) -> ApplyReport:
    """Upsert connections, pools and variables into Airflow's metadata DB in one transaction."""
    from airflow.models.connection import Connection
    from airflow.models.pool import Pool
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    with create_session() as session:
        for c in settings.connections:
            want: dict[str, Any] = {
                "conn_type": c.conn_type,
                "host": c.host,
                "schema": c.schema,
                "login": c.login,
                "password": c.password,
                "port": c.port,
                "extra": json.dumps(c.extra, sort_keys=True) if c.extra else None,
                "description": c.description,
            }
            row = session.query(Connection).filter(Connection.conn_id == c.conn_id).one_or_none()
            label = f"connection:{c.conn_id}"
            if row is None:
                session.add(Connection(conn_id=c.conn_id, **want))
                created.append(label)
            elif {k: getattr(row, k) for k in want} != want:
                for key, val in want.items():
                    setattr(row, key, val)
                updated.append(label)
            else:
                unchanged.append(label)
        for p in settings.pools:
            pool_row = session.query(Pool).filter(Pool.pool == p.name).one_or_none()
            label = f"pool:{p.name}"
            want_pool = {"slots": p.slots, "description": p.description, "include_deferred": p.include_deferred}
            if pool_row is None:
                session.add(Pool(pool=p.name, **want_pool))
                created.append(label)
            elif {k: getattr(pool_row, k) for k in want_pool} != want_pool:
                for key, pool_val in want_pool.items():
                    setattr(pool_row, key, pool_val)
                updated.append(label)
            else:
                unchanged.append(label)
        for var in settings.variables:
            var_row = session.query(Variable).filter(Variable.key == var.key).one_or_none()
            label = f"variable:{var.key}"
            if var_row is None:
                session.add(Variable(key=var.key, val=var.value, description=var.description))
                created.append(label)
            elif var_row.val != var.value or var_row.description != var.description:
                var_row.val = var.value
                var_row.description = var.description
                updated.append(label)
            else:
                unchanged.append(label)
    return ApplyReport(tuple(created), tuple(updated), tuple(unchanged))


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
