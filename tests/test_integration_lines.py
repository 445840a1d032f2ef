"""The README's lines-of-integration table is what bench/integration_lines.py counts in the examples."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .conftest import REPO


def _counter():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("integration_lines", REPO / "bench" / "integration_lines.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_count_of_the_examples() -> None:
    table = _counter().table()
    assert table in (REPO / "README.md").read_text()


def test_marked_lines_are_counted_and_comments_and_other_modes_are_not(tmp_path: Path) -> None:
    counter = _counter()
    script = tmp_path / "train.py"
    script.write_text(
        "import x  # sweeper\n"
        "# a comment alone  # sweeper\n"
        "def sweep(c, run):  # sweeper (function mode)\n"
        "    main()  # sweeper (command mode)\n"
        "y = 1  # not marked\n"
        "z = 2  # integration\n")
    assert counter.count_marked(script, "# sweeper", skip="(command mode)") == 2
    assert counter.count_marked(script, "# sweeper", skip="(function mode)") == 2
    assert counter.count_marked(script, "# integration") == 1
