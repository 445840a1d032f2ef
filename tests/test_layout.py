"""The package layout: user code comes in through sweeper.integrations, each module imports on its
own (no import cycle), and the optional frameworks load only when their adapter is imported
(tests/test_lightning.py and tests/test_transformers.py import those adapters first)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

MODULES = ["sweeper.integrations.run", "sweeper.integrations.command", "sweeper.integrations.function",
           "sweeper.integrations.trackers", "sweeper.integrations", "sweeper.tasks", "sweeper.spec", "sweeper.train",
           "sweeper.sweep", "sweeper.export", "sweeper.run_config", "sweeper.report"]

PROBE = f"""
import importlib, sys
for name in {MODULES!r}:
    for loaded in [m for m in sys.modules if m == "sweeper" or m.startswith("sweeper.")]:
        del sys.modules[loaded]
    importlib.import_module(name)  # first in a fresh package: a cycle through it fails here
for loaded in [m for m in sys.modules if m == "sweeper" or m.startswith("sweeper.")]:
    del sys.modules[loaded]
for framework in ("lightning", "transformers", "mlflow", "tensorboard"):
    sys.modules.pop(framework, None)
    for m in [m for m in sys.modules if m.startswith(framework + ".")]:
        del sys.modules[m]
import sweeper, sweeper.integrations, sweeper.sweep, sweeper.cli
print(sorted(f for f in ("lightning", "transformers", "mlflow", "tensorboard") if f in sys.modules))
"""


@pytest.mark.slow  # a fresh interpreter importing every module: CI runs it (make test-all)
def test_every_module_imports_first_and_the_frameworks_stay_optional() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # importing sweeper loads none of them


def test_the_built_in_tasks_do_not_import_the_integrations() -> None:
    for path in (REPO / "sweeper" / "tasks").glob("*.py"):
        imports = [line for line in path.read_text().splitlines() if line.lstrip().startswith(("import ", "from "))]
        assert not [line for line in imports if "integrations" in line], path.name
