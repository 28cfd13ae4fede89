"""Every chapter runs top to bottom in a fresh kernel within its time budget (executed copies in build/notebooks)."""

from __future__ import annotations

import json

import pytest

from bevnb.chapters import BUDGET_S, CHAPTERS, NOTEBOOK_DIR, execute
from bevnb.paths import build_dir


def test_every_chapter_has_a_notebook_with_stripped_outputs():
    import nbformat

    for name in CHAPTERS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs in git"
        assert any(c.cell_type == "markdown" for c in nb.cells), name


@pytest.mark.notebooks
@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_runs_within_budget(name):
    out = build_dir("notebooks")
    seconds = execute(name, out)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    timings[name] = round(seconds, 1)
    timings_path.write_text(json.dumps(timings, indent=1))
    print(f"{name}: {seconds:.1f} s (budget {BUDGET_S:.0f} s)")
    assert seconds <= BUDGET_S, f"{name} took {seconds:.1f} s, over its {BUDGET_S:.0f} s budget"
