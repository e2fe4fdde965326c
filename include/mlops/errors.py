"""Failure kinds of the pipeline, one exception per kind.

Each is raised where the bad input first arrives, with a message naming the
param/column/value and the rule it broke, so a user can act on it.
"""


class MlopsError(Exception):
    """Base class of every error this library raises on purpose."""


class SettingsError(MlopsError):
    """airflow_settings.yaml or a profile setting is malformed."""


class BatchReadError(MlopsError):
    """A data batch is missing, empty, unreadable or has the wrong shape."""


class DataValidationError(MlopsError):
    """A data batch failed its expectation suite."""


class TrainingFailed(MlopsError):
    """The training process exited with an error."""


class GateRejected(MlopsError):
    """The challenger did not beat the champion by the required margin."""


class InvalidReleaseParams(MlopsError):
    """A release was triggered with params that break a rule."""


class ModelLoadError(MlopsError):
    """An ONNX model file is missing, unreadable, or does not take/give what this project's features need."""


class CanaryFailed(MlopsError):
    """The canary failed its analysis and was rolled back."""


class DeployError(MlopsError):
    """A serving target could not reach the requested state."""


class BackendNotReady(DeployError):
    """A model server was started but never became ready: the model version's own fault."""


class ServingBusy(DeployError):
    """Another release owns the serving target's canary; this one may not touch it."""


class BuildError(MlopsError):
    """A serving image could not be built or pushed."""


class PlacementError(MlopsError):
    """A resource request cannot be placed (invalid or never satisfiable)."""


class CapacityWait(MlopsError):
    """Nothing acceptable is free now; look again after ``recheck_after_s`` (the router's advice).

    Not a failure: the Airflow seam turns it into a reschedule of the task."""

    def __init__(self, reason: str, recheck_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.recheck_after_s = recheck_after_s


class RegistryUnavailable(MlopsError):
    """The model registry did not answer (unreachable, timeout, server error): the answer is unknown.

    Never read as "absent": a missing champion would let a challenger pass the gate unopposed,
    and a missing version would be registered twice. The task fails; its retry asks again.
    """


class InvalidHistoryQuery(MlopsError):
    """A release-history query names a filter or page that breaks a rule."""


class AlertDeliveryError(MlopsError):
    """An alert channel (SMTP server, webhook) refused or did not take an alert."""
