"""The release and rollback DAGs' steps: check params, build the image, canary, promote or roll back.

Each function is one task body taking plain values and returning a JSON-safe dict. State that
must survive between tasks lives in the serving target (its state file) and the model registry
(aliases and version tags), so a retried task continues the same release instead of starting over.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from include.mlops.errors import CanaryFailed, DeployError, InvalidReleaseParams
from include.mlops.settings.project import ProjectSettings

Log = Callable[[str], None]
REJECTED_TAG = "release.status"


@dataclass(frozen=True)
class ReleaseParams:
    """The release form, validated once at the first task; every rule names its param."""

    model_name: str
    version: str = "challenger"
    steps_pct: tuple[int, ...] = (10, 25, 50, 100)
    interval_s: float = 20.0
    min_requests: int = 30
    max_extensions: int = 2
    failure_limit: int = 3
    max_error_rate: float = 0.02
    max_p99_latency_ratio: float = 1.5
    max_prediction_drift: float = 0.3
    ready_timeout_s: float = 60.0
    load_rps: float = 20.0
    require_approval: bool = False
    allow_gate_rejected: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        def bad(param: str, rule: str) -> InvalidReleaseParams:
            return InvalidReleaseParams(f"param {param}={getattr(self, param)!r}: {rule}")

        if not self.model_name or not self.model_name.strip():
            raise bad("model_name", "must name a registered model")
        if not self.version or not str(self.version).strip():
            raise bad("version", "must be a version number or an alias such as 'challenger'")
        steps = self.steps_pct
        if not steps:
            raise bad("steps_pct", "needs at least one step")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= 100 for s in steps):
            raise bad("steps_pct", "every step must be an integer in 1..100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise bad("steps_pct", "weights must be strictly increasing")
        if steps[-1] != 100:
            raise bad("steps_pct", "the last step must be 100 (the canary takes all traffic when promoted)")
        for name, low in (("interval_s", 0.0), ("ready_timeout_s", 0.0), ("load_rps", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= low:
                raise bad(name, f"must be a number > {low:g}")
        for name in ("min_requests", "failure_limit"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.max_extensions < 0:
            raise bad("max_extensions", "must be >= 0")
        if not 0 <= self.max_error_rate <= 1:
            raise bad("max_error_rate", "must be in 0..1")
        if self.max_p99_latency_ratio < 1:
            raise bad("max_p99_latency_ratio", "must be >= 1 (canary may be at most this many times slower)")
        if not 0 < self.max_prediction_drift <= 1:
            raise bad("max_prediction_drift", "must be in (0, 1] (Kolmogorov-Smirnov statistic)")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ReleaseParams:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in params.items() if k in known}
        if "steps_pct" in values:
            values["steps_pct"] = tuple(values["steps_pct"])
        if "version" in values:
            values["version"] = str(values["version"])
        try:
            return cls(**values)
        except TypeError as e:
            raise InvalidReleaseParams(f"release params: {e}") from e

    @property
    def analysis_steps(self) -> tuple[int, ...]:
        """Steps analysed against the stable; the final 100 % is the promotion itself."""
        return tuple(s for s in self.steps_pct if s < 100)

    def thresholds(self) -> Any:
        from include.mlops.canary.analysis import CanaryThresholds

        return CanaryThresholds(
            max_error_rate=self.max_error_rate,
            max_p99_latency_ratio=self.max_p99_latency_ratio,
            max_prediction_drift=self.max_prediction_drift,
            min_requests=self.min_requests,
        )


def serving_target(settings: ProjectSettings) -> Any:
    """The deploy target of the profile (one place that maps profile -> implementation)."""
    if settings.profile == "local":
        from include.mlops.deploy.local import LocalProcessTarget

        return LocalProcessTarget(settings.serving_root / settings.registered_model, python_executable=sys.executable)
    raise DeployError(
        f"profile {settings.profile!r}: no serving target implemented yet in this build (local only); "
        "set Variable mlops_profile=local"
    )


def _registry(settings: ProjectSettings) -> Any:
    from include.mlops.registry.mlflow_registry import MlflowRegistry

    return MlflowRegistry(settings.mlflow_tracking_uri)


def _model_file(settings: ProjectSettings, name: str, version: str) -> Path:
    reg = _registry(settings)
    ref = reg.get_version(name, version)
    return Path(reg.download_onnx(ref, settings.serving_root / "models" / name / ref.version))


def plan_release(settings: ProjectSettings, raw_params: dict[str, Any], log: Log = print) -> dict[str, Any]:
    """Validate the form and resolve the version; fail here, before anything is built or deployed."""
    from include.mlops.registry.mlflow_registry import CHAMPION

    params = ReleaseParams.from_params(raw_params)
    reg = _registry(settings)
    ref = reg.get_version(params.model_name, params.version)  # InvalidReleaseParams if unknown
    if ref.tags.get("gate.decision") == "rejected" and not params.allow_gate_rejected:
        raise InvalidReleaseParams(
            f"param version={params.version!r}: {params.model_name} v{ref.version} was rejected by the gate "
            f"({ref.tags.get('gate.reason', 'no reason recorded')}); set allow_gate_rejected to release it anyway"
        )
    champion = reg.get_alias(params.model_name, CHAMPION)
    state = serving_target(settings).status()
    stable_version = state.stable.version if state.stable else None
    noop = stable_version == ref.version and state.canary is None
    plan = {
        "params": {**asdict(params), "steps_pct": list(params.steps_pct)},
        "model_name": params.model_name,
        "version": ref.version,
        "run_id": ref.run_id,
        "champion_version": champion.version if champion else None,
        "stable_version": stable_version,
        "first_release": state.stable is None,
        "noop": noop,
        "dry_run": params.dry_run,
    }
    if noop:
        log(f"v{ref.version} is already the stable model and no canary runs: nothing to release")
    else:
        log(
            f"release {params.model_name} v{ref.version} over stable v{stable_version} "
            f"(champion v{plan['champion_version']}); steps {list(params.steps_pct)} every {params.interval_s:g} s"
            + ("; DRY RUN: nothing will be built or deployed" if params.dry_run else "")
        )
    return plan


def build_image(settings: ProjectSettings, plan: dict[str, Any], log: Log = print) -> dict[str, Any]:
    """Build and push the serving image; returns {"skipped": reason} where no engine is reachable."""
    if plan["noop"] or plan["dry_run"]:
        return {"skipped": "no-op release" if plan["noop"] else "dry run"}
    from include.mlops.build.docker_builder import DockerImageBuilder, engine_available
    from include.mlops.build.image import ModelArtifact

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


def _model_ref(settings: ProjectSettings, plan: dict[str, Any], image: dict[str, Any] | None) -> Any:
    from include.mlops.deploy.target import ModelRef

    digest = (image or {}).get("digest")
    path = _model_file(settings, plan["model_name"], plan["version"])
    return ModelRef(plan["model_name"], plan["version"], path, digest)


def deploy_canary(
    settings: ProjectSettings, plan: dict[str, Any], image: dict[str, Any] | None, log: Log = print
) -> dict[str, Any]:
    """Start the canary at 0 % (or, on the very first release, the stable itself)."""
    if plan["noop"] or plan["dry_run"]:
        return {"skipped": True}
    target = serving_target(settings)
    model = _model_ref(settings, plan, image)
    params = plan["params"]
    if plan["first_release"]:
        backend = target.ensure_stable(model, ready_timeout_s=params["ready_timeout_s"])
        log(f"first release: v{plan['version']} serves as stable at {target.status().router_url}")
        return {"first_release": True, "stable": backend.to_json()}
    try:
        backend = target.start_canary(model, ready_timeout_s=params["ready_timeout_s"])
    except DeployError as e:
        _reject(settings, plan, f"canary never became ready: {e}")
        raise CanaryFailed(f"v{plan['version']}: canary never became ready, rolled back: {e}") from e
    log(f"canary v{plan['version']} ready at {backend.url} with 0 % of traffic")
    return {"first_release": False, "canary": backend.to_json()}


def _reject(settings: ProjectSettings, plan: dict[str, Any], reason: str) -> None:
    _registry(settings).set_version_tags(
        plan["model_name"], plan["version"], {REJECTED_TAG: "rejected", "release.reason": reason[:4000]}
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
    return json.loads(sample.to_json(orient="records"))


def analyse(
    settings: ProjectSettings, plan: dict[str, Any], deployed: dict[str, Any], log: Log = print
) -> dict[str, Any]:
    """Step the canary weight, analyse each step against the stable, roll back at the first failure."""
    if plan["noop"] or plan["dry_run"] or deployed.get("first_release"):
        return {"skipped": True, "passed": True}
    from include.mlops.canary.load import LoadGenerator
    from include.mlops.canary.plot import plot_analysis
    from include.mlops.canary.runner import run_canary

    params = ReleaseParams.from_params(plan["params"])
    target = serving_target(settings)
    router_url = target.status().router_url
    out_dir = settings.serving_root / "analyses" / f"{plan['model_name']}-v{plan['version']}-{int(time.time())}"
    out_dir.mkdir(parents=True, exist_ok=True)

    step_lines: list[str] = []

    def on_step(step: Any) -> None:
        s = step.to_json()

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
        )
    for incident in outcome.incidents:
        log(f"during the analysis: {incident}")
    result = outcome.to_json()
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
            "canary.steps": json.dumps([s.to_json().get("verdict") for s in outcome.steps]),
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


def promote(settings: ProjectSettings, plan: dict[str, Any], log: Log = print) -> dict[str, Any]:
    """Canary becomes the stable (100 %), the old stable drains and stops, `champion` moves."""
    if plan["noop"] or plan["dry_run"]:
        return {"skipped": True}
    from include.mlops.registry.mlflow_registry import CHAMPION, PREVIOUS_CHAMPION_TAG

    target = serving_target(settings)
    state = target.status()
    if state.canary is not None:
        target.promote()
    stable = target.status().stable
    if stable is None or stable.version != plan["version"]:
        raise DeployError(f"after promote the stable is {stable.version if stable else None}, not v{plan['version']}")
    reg = _registry(settings)
    tags = {REJECTED_TAG: "promoted", "release.promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if plan["champion_version"] and plan["champion_version"] != plan["version"]:
        tags[PREVIOUS_CHAMPION_TAG] = plan["champion_version"]
    reg.set_version_tags(plan["model_name"], plan["version"], tags)
    reg.set_alias(plan["model_name"], CHAMPION, plan["version"])
    log(f"{plan['model_name']} v{plan['version']} is champion and serves 100 % at {target.status().router_url}")
    return {"champion": plan["version"], "previous_champion": plan["champion_version"]}


def rollback_release(settings: ProjectSettings, plan: dict[str, Any] | None, log: Log = print) -> dict[str, Any]:
    """After a failed step: stable back to 100 %, canary drained and stopped; champion unchanged."""
    target = serving_target(settings)
    state = target.status()
    stable = state.stable.version if state.stable else None
    if state.canary is not None:
        target.rollback("release failed")
        log(f"rolled back: canary v{state.canary.version} removed, stable v{stable} at 100 %")
    else:
        log("nothing to roll back: no canary is running")
    return {"stable": stable}


def rollback_to_version(
    settings: ProjectSettings, model_name: str, version: str | None, log: Log = print
) -> dict[str, Any]:
    """Manual rollback: put the previous champion (or a named version) back into service, fast."""
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
    target = serving_target(settings)
    state = target.status()
    if state.canary is not None:
        target.rollback("manual rollback requested")
    if state.stable is not None and state.stable.version == ref.version:
        log(f"v{ref.version} already serves as stable")
    else:
        path = reg.download_onnx(ref, settings.serving_root / "models" / model_name / ref.version)
        model = ModelRef(model_name, ref.version, Path(path), ref.tags.get("image.digest"))
        if state.stable is None:
            target.ensure_stable(model)
        else:
            target.start_canary(model, ready_timeout_s=60)
            target.promote()
    reg.set_alias(model_name, CHAMPION, ref.version)
    tags = {REJECTED_TAG: "rolled-back-to", "release.promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if champion is not None and champion.version != ref.version:
        tags[PREVIOUS_CHAMPION_TAG] = champion.version
    reg.set_version_tags(model_name, ref.version, tags)
    log(f"{model_name} v{ref.version} serves 100 % and is champion again")
    return {"champion": ref.version, "previous_champion": champion.version if champion else None}
