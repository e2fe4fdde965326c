"""The release and rollback DAGs' steps: check params, build the image, canary, promote or roll back.

Each function is one task body taking plain values and returning a JSON-safe dict. State that
must survive between tasks lives in the serving target (its state file) and the model registry
(aliases and version tags), so a retried task continues the same release instead of starting over.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.deploy.factory import serving_target
from include.mlops.deploy.target import describe_owner
from include.mlops.errors import BackendNotReady, CanaryFailed, DeployError, InvalidReleaseParams, ServingBusy
from include.mlops.release_params import ReleaseParams
from include.mlops.settings.project import ProjectSettings

if TYPE_CHECKING:
    # imported where used: the DAG's parse and the release's light steps load neither MLflow nor the targets
    from include.mlops.deploy.target import DeployTarget, ModelRef
    from include.mlops.registry.mlflow_registry import MlflowRegistry

Log = Callable[[str], None]
RELEASE_STATUS_TAG = "release.status"  # what the release did with the version: rejected, promoted, rolled-back-to
# serving-state record of a promotion whose alias move is not done yet (see promote)
PENDING_ALIAS = "pending_alias"


def _registry(settings: ProjectSettings) -> MlflowRegistry:
    from include.mlops.registry.mlflow_registry import MlflowRegistry

    return MlflowRegistry(settings.mlflow_tracking_uri)


def _model_file(settings: ProjectSettings, name: str, version: str) -> Path:
    reg = _registry(settings)
    ref = reg.get_version(name, version)
    return Path(reg.download_onnx(ref, settings.serving_root / "models" / name / ref.version))


def release_event(events: Any) -> dict[str, str] | None:
    """Model name and version from the newest triggering asset event that names them (retrain's
    `model_challenger_ready` extra), or None when the run was not asset-triggered."""
    if not events:
        return None
    for _asset, asset_events in events.items():
        for event in reversed(list(asset_events)):
            extra = getattr(event, "extra", None) or {}
            if extra.get("version") not in (None, ""):
                found = {"version": str(extra["version"])}
                if extra.get("model_name"):
                    found["model_name"] = str(extra["model_name"])
                return found
    return None


def requested_params(
    params: dict[str, Any], *, explicit: Any = (), event: dict[str, str] | None = None
) -> dict[str, Any]:
    """The form's params, with the triggering event's model name and version over the form's defaults.

    An asset-triggered run gets no conf, so its form holds only defaults ("challenger", resolved
    whenever the run starts, maybe after a newer retrain); the event names the exact version that
    retrain registered and gated. A value the trigger set explicitly (`explicit`: the keys of the
    run's conf) still wins over the event.
    """
    out = dict(params)
    for key in ("model_name", "version"):
        if key not in explicit and event and event.get(key):
            out[key] = event[key]
    return out


def _lost_state_file(target: DeployTarget) -> Path | None:
    """The serving-state file a target keeps (a local one does) when it does not exist now."""
    path = getattr(target, "state_path", None)
    return Path(path) if path is not None and not Path(path).exists() else None


def plan_release(
    settings: ProjectSettings,
    raw_params: dict[str, Any],
    log: Log = print,
    *,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the form and resolve the version; fail here, before anything is built or deployed.

    `run` ({"dag_id", "run_id"}) owns every serving change this release makes; without one a
    unique owner is made up, so two library callers never share a canary either.
    """
    from include.mlops.registry.mlflow_registry import CHAMPION

    params = ReleaseParams.from_params(raw_params)
    owner = dict(run) if run else {"dag_id": "release", "run_id": f"library-{uuid.uuid4().hex[:12]}"}
    reg = _registry(settings)
    ref = reg.get_version(params.model_name, params.version)  # InvalidReleaseParams if unknown
    if ref.tags.get("gate.decision") == "rejected" and not params.allow_gate_rejected:
        raise InvalidReleaseParams(
            f"param version={params.version!r}: {params.model_name} v{ref.version} was rejected by the gate "
            f"({ref.tags.get('gate.reason', 'no reason recorded')}); set allow_gate_rejected to release it anyway"
        )
    target = serving_target(settings, params.model_name)
    reconcile_promotion(settings, params.model_name, log)
    champion = reg.get_alias(params.model_name, CHAMPION)
    state = target.status()
    if state.canary is not None and target.canary_owner() != owner:
        raise ServingBusy(
            f"{params.model_name} v{ref.version} cannot be released now: "
            f"release {describe_owner(target.canary_owner())} "
            f"is in progress with canary v{state.canary.version} at {state.canary_weight_pct} %; wait for it, "
            "or run the rollback DAG to remove its canary"
        )
    lost = _lost_state_file(target)
    if state.stable is None and champion is not None and lost is not None and not params.reset_serving_state:
        raise InvalidReleaseParams(
            f"{params.model_name} has champion v{champion.version} but its serving state "
            f"{lost} does not exist (lost or never written on this machine): a release now would "
            f"put v{ref.version} at 100 % without canary analysis or approval. Restore that file, or set "
            "param reset_serving_state=true to serve this version as a first release"
        )
    stable_version = state.stable.version if state.stable else None
    stable_alive = state.stable is not None and target.backend_alive(state.stable)
    noop = stable_alive and stable_version == ref.version and state.canary is None
    plan = {
        "params": {**asdict(params), "steps_pct": list(params.steps_pct)},
        "model_name": params.model_name,
        "version": ref.version,
        "run_id": ref.run_id,
        "owner": owner,
        "champion_version": champion.version if champion else None,
        "stable_version": stable_version,
        "first_release": state.stable is None,
        # a stable that no longer runs is restarted before anything else (it never counts as serving)
        "restore_stable": state.stable is not None and not stable_alive,
        "noop": noop,
        "dry_run": params.dry_run,
    }
    if noop:
        log(f"v{ref.version} is already the stable model and no canary runs: nothing to release")
    else:
        log(
            f"release {params.model_name} v{ref.version} over stable v{stable_version}"
            + ("" if stable_alive or state.stable is None else " (NOT RUNNING: it is restarted first)")
            + f" (champion v{plan['champion_version']}); steps {list(params.steps_pct)} every {params.interval_s:g} s"
            + ("; DRY RUN: nothing will be built or deployed" if params.dry_run else "")
        )
    return plan


def build_image(settings: ProjectSettings, plan: dict[str, Any], log: Log = print) -> dict[str, Any]:
    """Build and push the serving image; returns {"skipped": reason} where no engine is reachable."""
    if plan["noop"] or plan["dry_run"]:
        return {"skipped": "no-op release" if plan["noop"] else "dry run"}
    from include.mlops.serving_image.docker_builder import DockerImageBuilder, engine_available
    from include.mlops.serving_image.image import ModelArtifact

    ok, reason = engine_available(settings.docker_base_url)
    if not ok and settings.profile != "local":  # only the local target can serve without an image
        from include.mlops.errors import BuildError

        raise BuildError(f"profile {settings.profile!r} serves images, but connection docker_default: {reason}")
    if not ok:
        msg = f"no Docker engine reachable ({reason}): the local target serves the exported model directly"
        log(msg)
        return {"skipped": msg}
    if not settings.image_registry:
        msg = "connection docker_default has no extra.registry: image not built"
        log(msg)
        return {"skipped": msg}
    onnx = _model_file(settings, plan["model_name"], plan["version"])
    builder = DockerImageBuilder.from_base_url(settings.docker_base_url, settings.image_registry)
    built = builder.build_and_push(ModelArtifact(plan["model_name"], plan["version"], onnx))
    _registry(settings).set_version_tags(
        plan["model_name"], plan["version"], {"image.reference": built.reference, "image.digest": built.digest}
    )
    log(f"image {built.reference} ({(built.size_bytes or 0) / 2**20:.0f} MB, {built.build_s:.1f} s)")
    return built.to_dict()


def _model_ref(settings: ProjectSettings, plan: dict[str, Any], image: dict[str, Any] | None) -> ModelRef:
    from include.mlops.deploy.target import ModelRef

    digest = (image or {}).get("digest")
    path = _model_file(settings, plan["model_name"], plan["version"])
    return ModelRef(plan["model_name"], plan["version"], path, digest)


def deploy_canary(
    settings: ProjectSettings, plan: dict[str, Any], image: dict[str, Any] | None, *, log: Log = print
) -> dict[str, Any]:
    """Start the canary at 0 % (or, on the very first release, the stable itself).

    Only a canary that never became ready is the version's fault (tagged rejected); a router
    failure or another release holding the target fails the task without blaming the version.
    """
    if plan["noop"] or plan["dry_run"]:
        return {"skipped": True}
    target = serving_target(settings, plan["model_name"])
    model = _model_ref(settings, plan, image)
    params = plan["params"]
    if plan["first_release"]:
        current = target.status().stable
        if current is not None and current.version != plan["version"]:
            raise ServingBusy(
                f"v{current.version} started serving {plan['model_name']} after check_params planned a first "
                f"release of v{plan['version']}; run the release again to canary it against v{current.version}"
            )
        backend = target.ensure_stable(model, ready_timeout_s=params["ready_timeout_s"])
        log(f"first release: v{plan['version']} serves as stable at {target.status().router_url}")
        return {"first_release": True, "stable": backend.to_dict()}
    stable = target.status().stable
    if plan.get("restore_stable"):
        for what in target.restore():  # a dead stable (or router) comes back before anything else
            log(f"restored {what}: it was not running")
    if stable is not None and stable.version == plan["version"] and target.status().canary is None:
        return {"first_release": True, "stable": (target.status().stable or stable).to_dict()}
    try:
        backend = target.start_canary(model, ready_timeout_s=params["ready_timeout_s"], owner=plan.get("owner"))
    except BackendNotReady as e:
        _reject(settings, plan, f"canary never became ready: {e}")
        raise CanaryFailed(f"v{plan['version']}: canary never became ready, rolled back: {e}") from e
    log(f"canary v{plan['version']} ready at {backend.url} with 0 % of traffic")
    return {"first_release": False, "canary": backend.to_dict()}


def _reject(settings: ProjectSettings, plan: dict[str, Any], reason: str) -> None:
    _registry(settings).set_version_tags(
        plan["model_name"], plan["version"], {RELEASE_STATUS_TAG: "rejected", "release.reason": reason[:4000]}
    )


def _replay_records(settings: ProjectSettings, n: int = 200) -> list[dict[str, Any]]:
    """Holdout records of the newest batch to replay through the router (raw columns, no label)."""
    from include.mlops.data.batches import latest_batch, read_batch
    from include.mlops.data.features import holdout_mask
    from include.mlops.data.schema import BOOLEAN_FEATURES, CATEGORICAL_FEATURES, NUMERIC_FEATURES

    df = read_batch(latest_batch(settings.landing_dir))
    cols = [*NUMERIC_FEATURES, *BOOLEAN_FEATURES, *CATEGORICAL_FEATURES]
    head = df.head(5 * n)
    sample = head.loc[holdout_mask(head, 0.2), cols].head(n)
    records: list[dict[str, Any]] = json.loads(sample.to_json(orient="records"))
    return records


def analyse(
    settings: ProjectSettings, plan: dict[str, Any], deployed: dict[str, Any], *, log: Log = print
) -> dict[str, Any]:
    """Step the canary weight, analyse each step against the stable, roll back at the first failure."""
    if plan["noop"] or plan["dry_run"] or deployed.get("first_release"):
        return {"skipped": True, "passed": True}
    from include.mlops.canary.load import LoadGenerator
    from include.mlops.canary.plot import plot_analysis
    from include.mlops.canary.runner import run_canary

    params = ReleaseParams.from_params(plan["params"])
    target = serving_target(settings, plan["model_name"])
    router_url = target.status().router_url
    if router_url is None:
        raise DeployError(f"{plan['model_name']}: the serving target has no router to send the analysis load to")
    out_dir = settings.serving_root / "analyses" / f"{plan['model_name']}-v{plan['version']}-{int(time.time())}"
    out_dir.mkdir(parents=True, exist_ok=True)

    step_lines: list[str] = []

    def on_step(step: Any) -> None:
        s = step.to_dict()

        def num(key: str, fmt: str = ".1f") -> str:
            v = s.get(key)
            return format(v, fmt) if isinstance(v, int | float) else str(v)

        step_lines.append(
            f"step {s.get('weight_pct')} %: {s.get('verdict')} (stable n={s.get('n_stable')}, "
            f"canary n={s.get('n_canary')}; p99 {num('latency_p99_stable_ms')} vs "
            f"{num('latency_p99_canary_ms')} ms; errors {num('error_rate_stable', '.3f')} vs "
            f"{num('error_rate_canary', '.3f')}; slow share {num('slow_share_stable', '.3f')} vs "
            f"{num('slow_share_canary', '.3f')}; drift KS {num('prediction_drift_ks', '.3f')}; "
            f"checks run: {', '.join(s.get('checks_run') or ()) or 'none'}): "
            f"{'; '.join(s.get('reasons') or ()) or 'within thresholds'}"
        )
        log(step_lines[-1])

    stop = threading.Event()  # bounded: the generator stops when the analysis loop ends
    load = LoadGenerator(router_url, _replay_records(settings), rps=params.load_rps, stop_event=stop)
    with load:
        outcome = run_canary(
            target,
            steps_pct=params.analysis_steps,
            interval_s=params.interval_s,
            max_extensions=params.max_extensions,
            failure_limit=params.failure_limit,
            thresholds=params.thresholds(),
            on_step=on_step,
            # a target with several replicas per track merges their samples (swarm.SwarmSampleSource)
            sample_source=target.sample_source() if hasattr(target, "sample_source") else None,
        )
    for incident in outcome.incidents:
        log(f"during the analysis: {incident}")
    result = outcome.to_dict()
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2, default=str))
    plot = plot_analysis(outcome.steps, out_dir / "analysis.png") if outcome.steps else None
    reg = _registry(settings)
    ref = reg.get_version(plan["model_name"], plan["version"])
    reg.log_version_artifact(ref, out_dir / "analysis.json", "canary")
    if plot is not None:
        reg.log_version_artifact(ref, plot, "canary")
    reg.set_version_tags(
        plan["model_name"],
        plan["version"],
        {
            "canary.verdict": "passed" if outcome.passed else "failed",
            "canary.reason": outcome.reason[:4000],
            "canary.steps": json.dumps([s.to_dict().get("verdict") for s in outcome.steps]),
            "canary.duration_s": f"{outcome.duration_s:.1f}",
        },
    )
    log(f"analysis: {out_dir / 'analysis.json'}")
    if not outcome.passed:
        if not outcome.rolled_back:
            target.rollback(outcome.reason)
        _reject(settings, plan, outcome.reason)
        raise CanaryFailed(
            f"{plan['model_name']} v{plan['version']} failed canary analysis and was rolled back to "
            f"stable v{plan['stable_version']}: {outcome.reason}"
        )
    return {
        "passed": True,
        "reason": outcome.reason,
        "steps": step_lines,
        "analysis_path": str(out_dir / "analysis.json"),
    }


def _finish_promotion(settings: ProjectSettings, pending: dict[str, Any]) -> None:
    """Tags, then the alias: both idempotent, so a retry (or the next run's reconcile) converges."""
    from include.mlops.registry.mlflow_registry import CHAMPION, PREVIOUS_CHAMPION_TAG

    reg = _registry(settings)
    name, version, previous = pending["model_name"], pending["version"], pending.get("previous_champion")
    tags = {RELEASE_STATUS_TAG: "promoted", "release.promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if previous and previous != version:
        tags[PREVIOUS_CHAMPION_TAG] = previous
    reg.set_version_tags(name, version, tags)
    reg.set_alias(name, CHAMPION, version)


def reconcile_promotion(settings: ProjectSettings, model_name: str, log: Log = print) -> str | None:
    """Finish a promotion whose serving switch happened but whose alias move did not (MLflow failed
    in between): `champion` is moved to what serves per the serving state's record. Returns the
    version made champion, or None when nothing was pending (or the record no longer matches)."""
    target = serving_target(settings, model_name)
    pending = target.record(PENDING_ALIAS)
    if not pending:
        return None
    stable = target.status().stable
    if stable is None or stable.version != pending["version"]:
        now = stable.version if stable else None
        log(f"pending promotion of v{pending['version']} never reached serving (stable v{now}): dropped")
        target.set_record(PENDING_ALIAS, None)
        return None
    _finish_promotion(settings, pending)
    target.set_record(PENDING_ALIAS, None)
    log(f"reconciled: {model_name} v{pending['version']} serves 100 % since its promotion; champion now names it")
    return str(pending["version"])


def promote(settings: ProjectSettings, plan: dict[str, Any], log: Log = print) -> dict[str, Any]:
    """Canary becomes the stable (100 %), the old stable drains and stops, `champion` moves.

    Not atomic across the router and MLflow, so the intended end state is recorded in the
    serving state first (PENDING_ALIAS); every step converges when repeated, and a promotion
    that stopped between the switch and the alias is finished by a retry or by the next
    release's check_params (reconcile_promotion).
    """
    if plan["noop"] or plan["dry_run"]:
        return {"skipped": True}
    target = serving_target(settings, plan["model_name"])
    state = target.status()
    pending = {
        "model_name": plan["model_name"],
        "version": plan["version"],
        "previous_champion": plan["champion_version"],
        "owner": plan.get("owner"),
    }
    if state.canary is not None:
        holder = target.canary_owner()
        if state.canary.version != plan["version"] or (plan.get("owner") and holder not in (None, plan["owner"])):
            raise ServingBusy(
                f"the canary is v{state.canary.version} of release {describe_owner(holder)}, not this release's "
                f"v{plan['version']}: not promoting it"
            )
        target.set_record(PENDING_ALIAS, pending)
        target.promote()
    stable = target.status().stable
    if stable is None or stable.version != plan["version"]:
        raise DeployError(f"after promote the stable is {stable.version if stable else None}, not v{plan['version']}")
    _finish_promotion(settings, pending)
    target.set_record(PENDING_ALIAS, None)
    log(f"{plan['model_name']} v{plan['version']} is champion and serves 100 % at {target.status().router_url}")
    # between releases nothing else watches the deployment: a target that can be kept (the Swarm
    # one: replicas Swarm replaces get new addresses) starts its supervisor here, once
    keep = getattr(target, "keep_supervised", None)
    if keep is not None:
        log(f"supervisor of {plan['model_name']}'s serving: pid {keep()}")
    return {"champion": plan["version"], "previous_champion": plan["champion_version"]}


def rollback_release(settings: ProjectSettings, plan: dict[str, Any], log: Log = print) -> dict[str, Any]:
    """After a failed step: stable back to 100 %, canary drained and stopped; champion unchanged.

    Only this release's own canary is removed: a canary another release started keeps running.
    """
    target = serving_target(settings, plan["model_name"])
    state = target.status()
    stable = state.stable.version if state.stable else None
    if state.canary is None:
        log("nothing to roll back: no canary is running")
    elif target.rollback("release failed", owner=plan.get("owner")):
        log(f"rolled back: canary v{state.canary.version} removed, stable v{stable} at 100 %")
    else:
        log(
            f"canary v{state.canary.version} belongs to release {describe_owner(target.canary_owner())}, not this one "
            f"({describe_owner(plan.get('owner'))}): left running"
        )
    return {"stable": stable}


def rollback_to_version(
    settings: ProjectSettings,
    model_name: str,
    version: str | None,
    *,
    log: Log = print,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Manual rollback: put the previous champion (or a named version) back into service, fast.

    The operator's override: a running canary is removed whichever release owns it, and the
    removal records that release and this run.
    """
    from include.mlops.deploy.target import ModelRef
    from include.mlops.registry.mlflow_registry import CHAMPION, PREVIOUS_CHAMPION_TAG

    reg = _registry(settings)
    champion = reg.get_alias(model_name, CHAMPION)
    if not version:
        if champion is None or not champion.tags.get(PREVIOUS_CHAMPION_TAG):
            raise InvalidReleaseParams(
                f"param version is empty and {model_name} has no previous champion recorded; name a version"
            )
        version = champion.tags[PREVIOUS_CHAMPION_TAG]
    ref = reg.get_version(model_name, version)
    target = serving_target(settings, model_name)
    state = target.status()
    if state.canary is not None:
        holder = target.canary_owner()
        target.rollback(
            f"manual rollback to v{ref.version} by {describe_owner(run)}: "
            f"operator override of release {describe_owner(holder)}"
        )
        log(f"removed canary v{state.canary.version} of release {describe_owner(holder)} (operator override)")
    target.set_record(PENDING_ALIAS, None)  # the operator decides what is champion now
    stable_alive = state.stable is not None and target.backend_alive(state.stable)
    if stable_alive and state.stable is not None and state.stable.version == ref.version:
        log(f"v{ref.version} already serves as stable")
    else:
        path = reg.download_onnx(ref, settings.serving_root / "models" / model_name / ref.version)
        model = ModelRef(model_name, ref.version, Path(path), ref.tags.get("image.digest"))
        if not stable_alive:
            target.ensure_stable(model)
        else:
            target.start_canary(model, ready_timeout_s=60, owner=run)
            target.promote()
    reg.set_alias(model_name, CHAMPION, ref.version)
    tags = {
        RELEASE_STATUS_TAG: "rolled-back-to",
        "release.promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if champion is not None and champion.version != ref.version:
        tags[PREVIOUS_CHAMPION_TAG] = champion.version
    reg.set_version_tags(model_name, ref.version, tags)
    log(f"{model_name} v{ref.version} serves 100 % and is champion again")
    return {"champion": ref.version, "previous_champion": champion.version if champion else None}
