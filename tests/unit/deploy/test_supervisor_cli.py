"""The supervisor's command line refuses what it cannot supervise, naming the param, value and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.mlops.deploy import supervisor


def test_a_folder_without_state_json_is_refused_naming_it(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        supervisor.main(["--state-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--state-dir={tmp_path}" in err and "no state.json" in err


@pytest.mark.parametrize("interval", ["0", "-1", "600"])
def test_an_interval_out_of_range_is_refused(tmp_path: Path, capsys, interval: str):
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(SystemExit):
        supervisor.main(["--state-dir", str(tmp_path), "--interval-s", interval])
    err = capsys.readouterr().err
    assert f"--interval-s={float(interval)}" in err and "0.05..60" in err


def test_stop_without_a_running_supervisor_is_a_no_op(tmp_path: Path):
    assert supervisor.running_pid(tmp_path) is None
    assert supervisor.stop(tmp_path) is False
