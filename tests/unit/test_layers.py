"""The layers and their one rule each (docs/DESIGN.md, "Layers"): only include/mlops/airflow/ imports
Airflow, nothing in the library imports the seam back, and the library really runs without Airflow.

Three checks: a scan of every import statement (function bodies and TYPE_CHECKING blocks too, which
an import test never executes); every library module imported in the training venv, which has no
Airflow installed; and every library module imported, and the retrain `route` step run, in the
Airflow venv with Airflow made unimportable (the library's other dependencies are all there).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from include.mlops.training.runner import training_python

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "include" / "mlops"
SEAM = LIBRARY / "airflow"

# Library modules the training venv (.venv-train: torch, ONNX, pandas; what the trainer needs) cannot
# import, with the package it lacks and why that package does not belong there. Anything else failing
# there, above all a missing `airflow`, fails the test. A module that starts importing there must
# leave this list (the test says so), so the list stays the truth.
ABSENT_FROM_TRAINING_VENV = {
    "include.mlops.data_quality.expectations": ("great_expectations", "validation runs in the worker, before training"),
    "include.mlops.routing.book_backends": ("sqlalchemy", "the router's book lives with the workers/api-server"),
    "include.mlops.routing.reservations": ("sqlalchemy", "the router's book lives with the workers/api-server"),
    "include.mlops.routing.router": ("sqlalchemy", "the router's book lives with the workers/api-server"),
    "include.mlops.serving.server": ("fastapi", "the model server runs in the serving image"),
    "include.mlops.settings.airflow_settings": ("yaml", "airflow_settings.yaml is read by the stack commands"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> list[str]:
    """Every module of the library outside the seam (packages included)."""
    return sorted(_module_name(p) for p in LIBRARY.rglob("*.py") if not p.is_relative_to(SEAM))


def _imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file, wherever it sits.
    ``name``: the file's module name (default: from its path under the checkout)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if not node.module]
    return found


def _is(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_only_the_seam_imports_airflow_and_nothing_in_the_library_imports_the_seam() -> None:
    broken = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.is_relative_to(SEAM):
            continue
        for line, module in _imports(path):
            if _is(module, "airflow"):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}: only include/mlops/airflow/ may")
            if _is(module, "include.mlops.airflow"):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}: the seam calls the library, not back")
            if any(_is(module, top) for top in ("dags", "plugins", "tests")):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}: the library imports no entry point")
    assert broken == []


def test_the_errors_module_imports_nothing_of_the_project() -> None:
    """errors.py is the bottom layer: every other layer raises its classes."""
    assert [m for _, m in _imports(LIBRARY / "errors.py") if _is(m, "include")] == []


def test_the_scan_sees_imports_inside_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    # the rule is only as good as the scan: an import an import test never runs must be seen too
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from airflow.sdk import Context\n"
        "def f():\n    import airflow.models\n    from . import retraining\n"
    )
    found = [m for _, m in _imports(probe, "include.mlops.probe")]
    assert found == ["typing", "airflow.sdk", "airflow.models", "include.mlops", "include.mlops.retraining"]


_IMPORT_ALL = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed[name] = getattr(exc, "name", None) or str(exc)
print(json.dumps({"failed": failed, "airflow_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "airflow")}))
"""


def _run(python: str, code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    out = subprocess.run(
        [python, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_every_library_module_imports_in_the_training_venv_which_has_no_airflow() -> None:
    python = training_python()
    probe = subprocess.run([python, "-c", "import airflow"], capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and "No module named 'airflow'" in probe.stderr, f"{python} has Airflow installed"
    result = _run(python, _IMPORT_ALL, json.dumps(library_modules()))
    expected = {name: package for name, (package, _why) in ABSENT_FROM_TRAINING_VENV.items()}
    assert result["failed"] == expected, (
        "library modules that fail to import in the training venv, with the package they miss, must be "
        f"exactly ABSENT_FROM_TRAINING_VENV (got {result['failed']})"
    )
    assert result["airflow_loaded"] == []


# Makes `import airflow` fail in a venv that has it, the way an interpreter without it fails.
_BLOCK_AIRFLOW = """
import importlib.abc, sys
class NoAirflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the library must not need it)", name=name)
        return None
sys.meta_path.insert(0, NoAirflow())
"""


def test_every_library_module_imports_and_a_retrain_step_runs_with_airflow_unimportable(tmp_path: Path) -> None:
    """All the library's own dependencies present, Airflow not: each module imports, and the `route`
    step places a training on this machine through a real router and reservation book."""
    result = _run(sys.executable, _BLOCK_AIRFLOW + _IMPORT_ALL, json.dumps(library_modules()))
    assert result == {"failed": {}, "airflow_loaded": []}
    route = _BLOCK_AIRFLOW + (
        "import json, sys\n"
        "from include.mlops.retraining import RunIdentity, route_training\n"
        "from include.mlops.routing.providers.local import LocalMachineProvider\n"
        "from include.mlops.routing.reservations import ReservationBook\n"
        "from include.mlops.routing.router import ResourceRouter\n"
        "router = ResourceRouter(LocalMachineProvider(), ReservationBook(sys.argv[1]))\n"
        "p = route_training(RunIdentity('retrain', 'no-airflow'), {'gpu_count': 0, 'gpu_types': []},"
        " router=router, log=lambda _m: None)\n"
        "print(json.dumps({'target': p['target'], 'launch': p['launch'],"
        " 'reserved': [r.task_key for r in router.book.active()]}))\n"
    )
    placed = _run(sys.executable, route, str(tmp_path / "book.sqlite"))
    assert placed == {"target": "local", "launch": "train.local", "reserved": ["retrain/no-airflow/train"]}


def test_the_blocker_makes_airflow_unimportable() -> None:
    """Else the test above proves nothing: the seam's operator module, which imports Airflow at the
    top, fails under the blocker."""
    module = "include.mlops.airflow.training_operator"
    result = _run(sys.executable, _BLOCK_AIRFLOW + _IMPORT_ALL, json.dumps([module]))
    assert result["failed"] == {module: "airflow"}
