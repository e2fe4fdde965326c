"""The release record from Airflow's and MLflow's facts: outcome, verdict and reason, links, paging."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from include.mlops.errors import InvalidHistoryQuery, RegistryUnavailable
from include.mlops.history.query import HistoryQuery, Urls, history_page
from include.mlops.history.records import ApprovalFacts, ReleaseRunFacts, TaskFacts, VersionFacts, assemble, outcome_of

T0 = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
URLS = Urls(airflow_ui="http://af", mlflow_ui="http://ml", api_prefix="http://af/release-history")
PLAN = {"model_name": "fraud", "version": "7", "run_id": "abc", "first_release": False, "noop": False, "dry_run": False}


def _task(state: str | None, start_s: float | None = 0, took_s: float = 2) -> TaskFacts:
    start = T0 + dt.timedelta(seconds=start_s) if start_s is not None else None
    end = start + dt.timedelta(seconds=took_s) if start else None
    return TaskFacts(state=state, start=start, end=end, duration_s=took_s if start else None)


def _run(state: str = "success", plan: dict[str, Any] | None = PLAN, **kw: Any) -> ReleaseRunFacts:
    tasks = kw.pop("tasks", {"check_params": _task("success"), "promote": _task("success", 10)})
    return ReleaseRunFacts(
        dag_id="release",
        run_id=kw.pop("run_id", "manual__2026-12-01T03:00:00+00:00"),
        state=state,
        run_type="manual",
        triggered_by=kw.pop("triggered_by", "ui"),
        triggering_user=kw.pop("triggering_user", "ana"),
        queued_at=T0,
        start=kw.pop("start", T0),
        end=T0 + dt.timedelta(seconds=30),
        conf={},
        plan=plan,
        tasks=tasks,
        **kw,
    )


def _version(**tags: str) -> VersionFacts:
    return VersionFacts(
        name="fraud", version="7", tags=tags, run_id="abc", experiment_id="3", created_at=T0,
        training_start=T0, training_end=T0, canary_steps=({"weight_pct": 50, "verdict": "pass"},), has_plot=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("run", "outcome"),
    [
        (_run(), "promoted"),
        (_run("failed", tasks={"analyse": _task("failed"), "rollback": _task("failed", 5)}), "rolled-back"),
        (
            _run("failed", tasks={"deploy_canary": _task("failed"), "rollback": _task("upstream_failed", None)}),
            "failed",
        ),
        (_run("failed", plan=None, tasks={"check_params": _task("failed")}), "refused"),
        (_run(plan={**PLAN, "noop": True}), "no-op"),
        (_run(plan={**PLAN, "dry_run": True}), "dry-run"),
        (_run("running", tasks={"approve": _task("deferred")}), "awaiting-approval"),
        (_run("queued", plan=None, tasks={}), "running"),
    ],
)
def test_outcome_comes_from_airflow_task_states(run: ReleaseRunFacts, outcome: str) -> None:
    assert outcome_of(run) == outcome


def test_a_rolled_back_canary_gives_the_canary_reason_and_links_to_the_failed_task_log() -> None:
    run = _run("failed", tasks={"analyse": _task("failed"), "rollback": _task("failed", 5)})
    rec = assemble(run, _version(**{"canary.verdict": "failed", "canary.reason": "canary error rate 100.0% > max"}),
                   airflow_ui=URLS.airflow_ui, mlflow_ui=URLS.mlflow_ui, api_prefix=URLS.api_prefix)  # fmt: skip
    assert (rec.outcome, rec.verdict, rec.reason) == ("rolled-back", "failed", "canary error rate 100.0% > max")
    assert rec.links.logs == "http://af/dags/release/runs/manual__2026-12-01T03%3A00%3A00%2B00%3A00/tasks/analyse"
    assert (
        rec.links.canary_plot
        == "http://af/release-history/releases/manual__2026-12-01T03%3A00%3A00%2B00%3A00/canary.png"
    )
    assert rec.links.mlflow_version == "http://ml/#/models/fraud/versions/7"
    assert rec.links.mlflow_run == "http://ml/#/experiments/3/runs/abc"


def test_a_rejected_approval_names_who_rejected_and_an_approved_one_who_approved() -> None:
    tasks = {"approve": _task("failed"), "rollback": _task("failed", 5)}
    no = ApprovalFacts(
        requested_at=T0, responded_at=T0 + dt.timedelta(seconds=40), responded_by="bo", chosen=("Reject",)
    )
    rejected = assemble(_run("failed", tasks=tasks, approval=no), None, airflow_ui="", mlflow_ui=None, api_prefix="")
    assert (rejected.verdict, rejected.approved_by, rejected.approval_wait_s) == ("rejected", None, 40.0)
    assert rejected.reason == "approval rejected by bo; canary rolled back"
    yes = ApprovalFacts(requested_at=T0, responded_at=T0, responded_by="bo", chosen=("Approve",))
    approved = assemble(_run(approval=yes), _version(), airflow_ui="", mlflow_ui=None, api_prefix="")
    assert approved.approved_by == "bo" and approved.reason.endswith("; approved by bo")
    assert approved.triggered_by == "ui by ana" and approved.links.mlflow_version is None


def test_record_json_has_iso_utc_times_and_per_task_durations() -> None:
    out = assemble(_run(), _version(**{"validation.success": "False", "validation.expectations": "27"}),
                   airflow_ui="", mlflow_ui=None, api_prefix="").to_dict()  # fmt: skip
    assert out["started_at"] == "2026-12-01T03:00:00+00:00" and out["duration_s"] == 30.0
    assert out["task_durations_s"] == {"check_params": 2.0, "promote": 2.0}
    assert out["validation"] == "failed (27 expectations)"


class _Versions:
    def __init__(self, fail: bool = False) -> None:
        self.asked: list[str] = []
        self.fail = fail

    def version(self, name: str, version: str) -> VersionFacts | None:
        self.asked.append(version)
        if self.fail:
            raise RegistryUnavailable("MLflow at http://ml did not answer")
        return _version()


def test_pages_are_newest_first_filtered_before_mlflow_is_asked() -> None:
    runs = [
        _run(run_id=f"r{i}", start=T0 + dt.timedelta(minutes=i), plan={**PLAN, "version": str(i)}) for i in range(5)
    ]
    versions = _Versions()
    page = history_page(runs, HistoryQuery(per_page=2, page=2), versions, URLS)
    assert [r["run_id"] for r in page["releases"]] == ["r2", "r1"] and page["pages"] == 3 and page["total"] == 5
    assert versions.asked == ["2", "1"]  # only the page's versions
    assert history_page(runs, HistoryQuery(model="other"), versions, URLS)["total"] == 0


def test_an_unreachable_mlflow_leaves_airflow_facts_and_says_why() -> None:
    page = history_page([_run()], HistoryQuery(), _Versions(fail=True), URLS)
    rec = page["releases"][0]
    assert rec["outcome"] == "promoted" and list(rec["facts_missing"]) == [
        "MLflow facts unavailable: MLflow at http://ml did not answer"
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcome": "exploded"}, "param outcome='exploded': must be one of promoted"),
        ({"page": 0}, "param page=0: must be 1 or more"),
        ({"per_page": 101}, "param per_page=101: must be between 1 and 100"),
        ({"model": " "}, "param model=' ': must not be blank"),
    ],
)
def test_a_bad_query_is_refused_naming_the_param(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidHistoryQuery, match="^" + message.replace("(", r"\(")):
        HistoryQuery(**kwargs)
