"""The retrain `resources` param may not pick a priority class or a toleration off the deployment's
allow-lists (Variables mlops_allowed_priority_classes / mlops_allowed_tolerations): the `route`
step refuses it, naming the param, the value and the allow-list, before the router places or
reserves anything. Real router and reservation book; Variables from AIRFLOW_VAR_* as deployed,
read by the Airflow seam (include.mlops.airflow.config.resource_policy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.mlops.airflow import config
from include.mlops.errors import PlacementError
from include.mlops.retraining import RunIdentity, route_training
from include.mlops.routing.providers.local import LocalMachineProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter

IDENT = RunIdentity("retrain", "manual__policy")
CPU = {"gpu_count": 0, "gpu_types": []}


@pytest.fixture()
def router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ResourceRouter:
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_ALLOWED_PRIORITY_CLASSES", '["training-high"]')
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_ALLOWED_TOLERATIONS", '["dedicated"]')
    return ResourceRouter(LocalMachineProvider(), ReservationBook(tmp_path / "book.sqlite"))


def _nothing_placed(router: ResourceRouter) -> bool:
    return router.book.active() == [] and router.book.recent_decisions() == []


def test_a_priority_class_off_the_allow_list_is_refused_before_placement(router: ResourceRouter) -> None:
    with pytest.raises(PlacementError) as err:
        route_training(
            IDENT, {**CPU, "priority_class": "system-cluster-critical"}, router=router, policy=config.resource_policy()
        )
    assert str(err.value) == (
        "resources.priority_class='system-cluster-critical' is not allowed: Variable "
        "mlops_allowed_priority_classes allows ['training-high'] (an admin adds a class there)"
    )
    assert _nothing_placed(router)


def test_a_toleration_off_the_allow_list_is_refused_before_placement(router: ResourceRouter) -> None:
    with pytest.raises(PlacementError) as err:
        route_training(
            IDENT,
            {**CPU, "tolerate_taints": ["dedicated", "node-role.kubernetes.io/control-plane"]},
            router=router,
            policy=config.resource_policy(),
        )
    message = str(err.value)
    assert "resources.tolerate_taints=['dedicated', 'node-role.kubernetes.io/control-plane']" in message
    assert "['node-role.kubernetes.io/control-plane'] not allowed" in message
    assert "Variable mlops_allowed_tolerations allows ['dedicated']" in message
    assert _nothing_placed(router)


def test_a_toleration_given_as_a_string_is_refused_not_split_into_characters(router: ResourceRouter) -> None:
    with pytest.raises(PlacementError, match=r"resources.tolerate_taints='dedicated': must be a list"):
        route_training(IDENT, {**CPU, "tolerate_taints": "dedicated"}, router=router, policy=config.resource_policy())
    assert _nothing_placed(router)


def test_allowed_values_are_placed_and_an_unset_allow_list_allows_none(
    router: ResourceRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    placement = route_training(
        IDENT,
        {**CPU, "priority_class": "training-high", "tolerate_taints": ["dedicated"]},
        router=router,
        policy=config.resource_policy(),
    )
    assert placement["decision"] == "place" and placement["priority_class"] == "training-high"
    monkeypatch.delenv("AIRFLOW_VAR_MLOPS_ALLOWED_PRIORITY_CLASSES")
    with pytest.raises(PlacementError, match=r"mlops_allowed_priority_classes allows \[\]"):
        route_training(
            IDENT, {**CPU, "priority_class": "training-high"}, router=router, policy=config.resource_policy()
        )
