"""Great Expectations classes the suite needs beyond GX's own.

Kept tiny and named for what they fix; the loader finds them by class name next to gx.expectations.
"""

from __future__ import annotations

from typing import Any

import great_expectations as gx

__all__ = ["CUSTOM_EXPECTATIONS", "ExpectColumnQuantileValuesToBeBetweenJsonSafe"]


class ExpectColumnQuantileValuesToBeBetweenJsonSafe(gx.expectations.ExpectColumnQuantileValuesToBeBetween):
    """GX's quantile expectation with a JSON-serialisable result.

    GX 1.24 with numpy 2 returns numpy bools in `details.success_details`, which its own
    validation-results store then fails to serialise (TypeError: bool is not JSON serializable).
    """

    def _validate(
        self,
        metrics: dict[str, Any],
        runtime_configuration: dict[str, Any] | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        out = super()._validate(metrics, runtime_configuration, execution_engine)
        result = out["result"]
        result["details"]["success_details"] = [bool(x) for x in result["details"]["success_details"]]
        observed = result["observed_value"]
        observed["values"] = [None if v is None else float(v) for v in observed["values"]]
        out["success"] = bool(out["success"])
        validated: dict[str, Any] = out
        return validated


CUSTOM_EXPECTATIONS: dict[str, type] = {cls.__name__: cls for cls in (ExpectColumnQuantileValuesToBeBetweenJsonSafe,)}
