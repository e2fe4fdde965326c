"""The server's record encoding (data/features.encode_records) names what is wrong; model loading; the split."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.mlops.data.features import encode_records
from include.mlops.deploy.caddy import split_for
from include.mlops.errors import ModelLoadError
from include.mlops.serving.server import load_session
from tests.model_fixtures import build_logistic_model, build_unloadable_model, sample_records


def test_missing_field_is_named_with_record_index():
    recs = sample_records(2)
    del recs[1]["country"]
    with pytest.raises(ValueError, match=r"records\[1\] is missing field 'country'"):
        encode_records(recs)


def test_unloadable_model_raises_model_load_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        load_session(build_unloadable_model(tmp_path / "x.onnx"), 1)
    assert load_session(build_logistic_model(tmp_path / "ok.onnx"), 1) is not None


@pytest.mark.parametrize("pct", [1, 10, 25, 33, 50, 90, 99])
def test_router_rotation_gives_exact_share_spread_evenly(pct: int):
    rot = split_for("S", "C", pct).rotation()
    assert rot.count("C") / len(rot) == pytest.approx(pct / 100)
    # evenly spread: any window of ceil(len/count_c)+1 entries contains a canary slot (pct <= 50)
    if pct <= 50:
        gap = max(len(s) for s in "".join(rot).split("C"))
        assert gap <= round(100 / pct)
