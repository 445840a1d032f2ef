"""Lines a user adds to hook training code into a sweep, counted from the examples.

    python bench/integration_lines.py          # the markdown table in the README

sweeper's examples (``examples/*/train.py``) mark every line added for sweeper with a trailing
``# sweeper`` comment; lines only one mode needs say so (``# sweeper (function mode)``,
``# sweeper (command mode)``). The same programs written for Optuna, Ray Tune and transformers'
own ``hyperparameter_search`` (``bench/integration_lines/*.py``, following each tool's
documentation) mark theirs ``# integration``. A counted line is a code line carrying the
marker; a line of comment alone is not counted. sweeper's search space lives in the study file,
whose lines (not comments, not blank) are counted apart; the others write it in code, which
their counts include.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "bench" / "integration_lines"

# (row, sweeper example folder, {tool column: reference file})
ROWS: list[tuple[str, str, dict[str, str]]] = [
    ("plain PyTorch loop (digits MLP)", "digits_mlp",
     {"Optuna": "digits_optuna.py", "Ray Tune": "digits_raytune.py"}),
    ("Lightning (digits)", "lightning_digits",
     {"Optuna": "lightning_optuna.py", "Ray Tune": "lightning_raytune.py"}),
    ("transformers Trainer (tiny BERT)", "transformers_tiny",
     {"transformers' own": "transformers_hpsearch.py"}),
]
TOOLS = ("Optuna", "Ray Tune", "transformers' own")


def _code_part(line: str) -> str:
    return line.split("#", 1)[0].strip()


def count_marked(path: Path, marker: str, skip: str | None = None) -> int:
    """Code lines of ``path`` carrying ``marker`` (and not ``skip``)."""
    n = 0
    for line in path.read_text().splitlines():
        comment = line.partition("  #")[2] if "  #" in line else ""
        if not comment.strip().startswith(marker.lstrip("# ")):
            continue
        if skip is not None and skip in comment:
            continue
        if _code_part(line):
            n += 1
    return n


def study_lines(path: Path) -> int:
    """Lines of a study file that are not blank or comments."""
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#"))


def table() -> str:
    head = ["code", "sweeper, function mode", "sweeper, command mode", "+ study file", *TOOLS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, example, refs in ROWS:
        script = ROOT / "examples" / example / "train.py"
        function_mode = count_marked(script, "# sweeper", skip="(command mode)")
        command_mode = count_marked(script, "# sweeper", skip="(function mode)")
        study = study_lines(ROOT / "examples" / example / "study.yaml")
        cells = [row, str(function_mode), str(command_mode), str(study)]
        for tool in TOOLS:
            cells.append(str(count_marked(REF / refs[tool], "# integration")) if tool in refs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["count_marked", "study_lines", "table"]
