"""The land_batch DAG end to end: a second batch of the same day lands beside the first, never over it."""

from __future__ import annotations

import pytest

from include.mlops.assets import TRANSACTIONS_LANDING
from include.mlops.data.batches import fingerprint, read_batch
from tests.e2e.conftest import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_landing_twice_on_one_day_keeps_the_first_batch_untouched(deployment: Deployment) -> None:
    conf = {"batch_date": "2026-10-20", "rows": 1000}
    first = deployment.dags_test("land_batch", {**conf, "seed": 1})
    assert first.state == "success", first.explain()
    landing = deployment.data_root / "landing"
    original = landing / "transactions_2026-10-20.parquet"
    pinned = fingerprint(original)

    second = deployment.dags_test("land_batch", {**conf, "seed": 2})

    assert second.state == "success", second.explain()
    again = landing / "transactions_2026-10-20_2.parquet"
    assert sorted(p.name for p in landing.iterdir() if "2026-10-20" in p.name) == [original.name, again.name]
    assert fingerprint(original) == pinned  # a run validated on the first batch still finds its bytes
    assert read_batch(again)["transaction_id"].iloc[0].startswith("tx-20261020-s2-")
    # each landing announced its own file: the retrain it triggers trains on that one
    assert [e["path"] for e in deployment.asset_events(TRANSACTIONS_LANDING)][-2:] == [str(original), str(again)]
