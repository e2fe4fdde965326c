"""Parse time of each DAG file as Airflow's own DAG processing measures it (`airflow dags report`).

Baseline in the same run: the same files with the heavy imports a naive DAG makes at top level
(mlflow, pandas, great_expectations), so the ratio shows what thin DAG files save on every parse.
Target: under 0.5 s a file on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from include.mlops.stack import VENV_BIN, airflow_env  # noqa: E402

TARGET_S = 0.5
NAIVE_HEADER = "import mlflow  # noqa\nimport pandas  # noqa\nimport great_expectations  # noqa\n"


def _seconds(text: str) -> float:
    h, m, s = text.split(":")
    return timedelta(hours=int(h), minutes=int(m), seconds=float(s)).total_seconds()


def report(dags_folder: Path) -> dict[str, float]:
    env = airflow_env()
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    out = subprocess.run(
        [str(VENV_BIN / "airflow"), "dags", "report", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("["))
    return {row["file"]: _seconds(row["duration"]) for row in json.loads(line)}


def main() -> int:
    home = Path(airflow_env()["AIRFLOW_HOME"])
    if not (home / "airflow.db").exists():
        subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=airflow_env(), check=True, capture_output=True)
    # one file per report: the dag-processor parses each file in its own process, so a module
    # imported by one file must not make the next one look cheap
    ours: dict[str, float] = {}
    naive: dict[str, float] = {}
    for f in sorted((ROOT / "dags").glob("*.py")):
        with tempfile.TemporaryDirectory() as tmp_ours, tempfile.TemporaryDirectory() as tmp_naive:
            shutil.copy(f, tmp_ours)
            text = f.read_text()
            future = "from __future__ import annotations\n"
            (Path(tmp_naive) / f.name).write_text(text.replace(future, future + NAIVE_HEADER, 1))
            ours.update(report(Path(tmp_ours)))
            naive.update(report(Path(tmp_naive)))
    print(f"{'file':24} {'parse_s':>9} {'naive_s':>9} {'naive/ours':>11}  target<{TARGET_S}s")
    worst = 0.0
    for name in sorted(ours):
        o, n = ours[name], naive.get(name, float("nan"))
        worst = max(worst, o)
        print(f"{name:24} {o:9.3f} {n:9.3f} {n / o if o else float('inf'):11.1f}  {'ok' if o < TARGET_S else 'OVER'}")
    print(f"worst file: {worst:.3f} s ({'meets' if worst < TARGET_S else 'misses'} the {TARGET_S} s target)")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.exit(main())
