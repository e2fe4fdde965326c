"""Land a synthetic transactions batch (demo and tests): write_batch -> Asset transactions_landing."""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task

from include.mlops.assets import TRANSACTIONS_LANDING

LANDING = Asset(TRANSACTIONS_LANDING)

DOC = """
### Land a batch

Writes a dated Parquet batch of synthetic card transactions into the landing folder
(Variable `mlops_data_root`/landing) and emits the Asset event `transactions_landing`
with the batch path, which triggers **retrain**. A batch is never overwritten: a second
batch of the same day lands as `transactions_<date>_2.parquet`, and so on. Params inject
drift or corruption, to see the data checks stop a run. Real producers emit the same event through the Airflow
REST API (`POST /api/v2/assets/events`) after writing their file.
"""


@dag(
    dag_id="land_batch",
    description="Generate a dated transactions batch in the landing folder and announce it",
    doc_md=DOC,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["mlops", "data"],
    default_args={"owner": "mlops", "retries": 1},
    params={
        "batch_date": Param(None, type=["null", "string"], format="date", description="Batch date; empty: yesterday"),
        "rows": Param(50_000, type="integer", minimum=1000, maximum=2_000_000, description="Rows in the batch"),
        "seed": Param(7, type="integer", description="Random seed"),
        "drift": Param(0.0, type="number", minimum=0, maximum=1, description="Distribution drift to inject (0..1)"),
        "corruption": Param(
            "none",
            enum=[
                "none",
                "nulls",
                "duplicate_ids",
                "out_of_range",
                "wrong_types",
                "missing_column",
                "all_null_column",
                "bad_category",
            ],
            description="Corruption to inject",
        ),
    },
)
def land_batch() -> None:
    @task(outlets=[LANDING])
    def write_batch(params: dict, outlet_events=None, logical_date=None) -> str:  # type: ignore[no-untyped-def]
        from include.mlops.airflow.config import project_settings
        from include.mlops.data.batches import land_frame
        from include.mlops.data.generate import generate_batch

        settings = project_settings()
        # default yesterday: a complete day (today's would hold events later than its landing time)
        date = params.get("batch_date") or pendulum.now("UTC").subtract(days=1).to_date_string()
        corruption = None if params["corruption"] == "none" else params["corruption"]
        df = generate_batch(params["rows"], params["seed"], params["drift"], corruption=corruption, batch_date=date)
        path = land_frame(df, settings.landing_dir, date)  # never overwrites: a 2nd batch that day gets _2
        outlet_events[LANDING].extra = {"path": str(path)}
        return str(path)

    write_batch()


land_batch()
