"""Grant the resource router's view to Flask-AppBuilder roles (deployments on the FAB auth manager).

The router's API asks the auth manager ``is_authorized_custom_view`` on the resource "Resource
router" (GET: read, POST: a dry run). FAB answers from role permissions, and a permission on a
plugin's resource does not exist until someone creates it: ``airflow roles add-perms`` refuses
("Resource named 'Resource router' does not exist"). This creates the permissions and adds them
to the roles named:

    python -m include.mlops.airflow.fab_roles Viewer Op          # read + dry run
    python -m include.mlops.airflow.fab_roles --read-only Viewer  # read only

Idempotent. Other auth managers decide custom views themselves (SimpleAuthManager: any role).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from include.mlops.airflow.auth import ROUTER_RESOURCE
from include.mlops.errors import SettingsError

READ_ACTION = "can_read"  # GET
DRY_RUN_ACTION = "can_create"  # POST /dry-run


def grant_router_access(roles: Sequence[str], *, read_only: bool = False) -> list[str]:
    """Give each FAB role the router's permissions; returns what was granted, one line each."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    actions = (READ_ACTION,) if read_only else (READ_ACTION, DRY_RUN_ACTION)
    granted: list[str] = []
    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        missing = [r for r in roles if sm.find_role(r) is None]
        if missing:
            raise SettingsError(
                f"FAB role(s) {missing} do not exist; create them first (airflow roles create NAME) "
                "or name an existing one (Viewer, User, Op, Admin)"
            )
        for name in roles:
            role = sm.find_role(name)
            for action in actions:
                sm.add_permission_to_role(role, sm.create_permission(action, ROUTER_RESOURCE))
                granted.append(f"{name}: {action} on {ROUTER_RESOURCE!r}")
    return granted


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Grant the resource router's view to FAB roles.")
    ap.add_argument("roles", nargs="+", help="FAB role names, e.g. Viewer Op")
    ap.add_argument("--read-only", action="store_true", help="read only, no dry runs (POST)")
    args = ap.parse_args(argv)
    try:
        lines = grant_router_access(args.roles, read_only=args.read_only)
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    print("\n".join(lines))


if __name__ == "__main__":
    main()
