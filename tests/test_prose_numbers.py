"""No measured number is typed into a chapter's markdown: prose that a later run could contradict fails here.

**The rule.** A *measured number* is one that another run, another machine or another version of a tool could
change. In markdown it is recognised by its form:

* a number with a unit of time (``s``, ``ms``, ``µs``, ``ns``, ``min``), of level (``dB``), a share (``%``), a
  rate (``FPS``, ``GB/s``, ``TB/s``) or a score (``mAP``), also as a range (``5.3–5.6 s``) or a list
  (``15.6, 12.5 and 20.3 dB``);
* a factor (``3.8×``, ``20×``: a number and ``×`` not followed by another number, which would be a size like
  ``1600×900``);
* an approximation (``about 52``, ``around 43``, ``roughly``, ``nearly``, ``almost``, ``some``, ``~1e-5``): prose
  hedges only what it measured;
* a similarity (``cosine 0.989``).

Such a number belongs in prose only where code of the same run renders it (an ``IPython.display.Markdown`` built
by the cell from the measurement), which this test cannot see and so never flags.

**Not measurements** (never flagged): facts exact by construction — shapes (``[6, 118, 32, 88]``), sizes
(``1600×900``), counts the architecture or the configuration fixes (``63 Conv``, 118 depth bins, 0.3 m cells,
``±54 m``), versions, opsets, issue numbers — and thresholds a check or a target sets (``≤ 1e-3``, ``≥ 0.98``,
``at least 50 %``): a threshold is a parameter, not a result. Inline code, math and links are skipped.

**Cited facts** from elsewhere (upstream's mAP, a GPU's data-sheet bandwidth) may stand in prose with their source
beside them in the chapter; each is listed in ``CITED`` below with that source.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from bevnb.chapters import CHAPTERS, NOTEBOOK_DIR

UNIT = r"(?:ms|µs|us|ns|s|min|dB|%|mAP|FPS|fps|GB/s|TB/s)"
NUMBER = r"[+\-−]?\d[\d,]*(?:\.\d+)?(?:[eE][+\-−]?\d+)?"
_NUMBERS = rf"{NUMBER}(?:\s?[–-]\s?{NUMBER})?(?:\s?(?:,|and|or|/)\s?{NUMBER})*"
MEASURED = re.compile(
    "|".join(
        (
            rf"(?<![\w.\-/]){_NUMBERS}\s?{UNIT}(?![\w/])",  # 8.6 s, 21.6 dB, 5.3–5.6 s, 15.6, 12.5 and 20.3 dB
            r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?×(?!\s?\d)",  # 3.8×, 20× (not 1600×900)
            rf"(?:\b(?:about|around|roughly|nearly|almost|some)\s+|~\s?){NUMBER}",  # about 52, ~1e-5
            rf"\bcosine\s+(?:similarity\s+)?{NUMBER}",  # cosine 0.989
        )
    )
)
THRESHOLD = re.compile(r"(?:≤|≥|\bat least|\bat most)\s*$")  # a tolerance or a target just before the number

CITED = {
    # chapter: phrases allowed verbatim, each a fact from elsewhere whose source the chapter names beside it
    "04_fake_quant_export": (
        "67.66 mAP",  # CUDA-BEVFusion README (Lidar_AI_Solution): BEVFusion-R50 PTQ int8, 67.89 → 67.66 mAP
        "25 FPS",  # the same README: 18 → 25 FPS on Orin
        "0.23 mAP",  # the same README's two mAP numbers, 67.89 − 67.66
        "0.01 %",  # not measured: the definition of the 99.99 percentile calibrator (pytorch-quantization)
    ),
    "06_triton_bev_pool": (
        "3.35 TB/s",  # NVIDIA H100 SXM data sheet (HBM3), as bevnb.bevpool.traffic.BANDWIDTHS
        "4.8 TB/s",  # NVIDIA H200 data sheet (HBM3e), as BANDWIDTHS
        "17.3 µs",  # NVIDIA's BEVPoolV3 report, as chapter 06 names it: fp16 on an RTX PRO 6000 Blackwell
        "90 µs",  # the same report: RTX A6000
    ),
}


def strip_markup(text: str) -> str:
    """Markdown without code blocks, inline code, math and link targets: what a reader reads as prose."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$", " ", text, flags=re.S)
    return re.sub(r"\]\([^)]*\)", "]", text)


def measured_numbers(markdown: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """The measured numbers typed into ``markdown`` (see the module docstring), minus the ``allowed`` phrases."""
    prose = strip_markup(markdown)
    found = []
    for match in MEASURED.finditer(prose):
        if THRESHOLD.search(prose[: match.start()]):
            continue
        if any(phrase in match.group() or match.group() in phrase for phrase in allowed):
            continue
        found.append(" ".join(match.group().split()))
    return found


def notebook_findings(nb: nbformat.NotebookNode, allowed: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """``(cell index, number)`` for every measured number in the notebook's markdown cells."""
    return [
        (i, number)
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "markdown"
        for number in measured_numbers(cell.source, allowed)
    ]


PLANTED = [
    "Calibration takes 8.6 s on this machine.",
    "ModelOpt costs 1.1–1.3 dB against MSE.",
    "ONNX Runtime gets 15.6, 12.5 and 20.3 dB.",
    "Its lanes do work 99.6 % of the time.",
    "The floor needs 8.8 µs at an H200's bandwidth.",
    "The reference moves 92× the floor.",
    "MSE keeps nearly the whole range (about 52 m).",
    "The backbone's outputs agree to ~1e-5 of their scale.",
    "pooled BEV cosine 0.997.",
    "The trained model reaches 64.2 mAP.",
]
NOT_MEASURED = [
    "`camera_depth_weights [6, 118, 32, 88]`, 118 depth bins, 63 Conv, 1600×900 raw images, cells of 0.3 m.",
    "The check: final relative error ≤ 1e-3; final cosine ≥ 0.98; at least 50 % of the copy bandwidth.",
    "Opset 13, onnxsim 0.8.1, issue #315, ±54 m, `took 8.6 s` in code, $x \\cdot 2$ in math.",
]


@pytest.mark.parametrize("sentence", PLANTED)
def test_a_planted_measured_number_is_caught(sentence):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A chapter\n\nProse without a measurement."),
        nbformat.v4.new_code_cell("print(1)"),
        nbformat.v4.new_markdown_cell(f"## Closing note\n\n{sentence}"),
    ]
    findings = notebook_findings(nb)
    assert findings and all(cell == 2 for cell, _ in findings), (sentence, findings)


@pytest.mark.parametrize("sentence", NOT_MEASURED)
def test_facts_exact_by_construction_are_not_flagged(sentence):
    assert measured_numbers(sentence) == []


def test_cited_facts_pass_only_where_listed():
    text = "upstream: 67.89 → 67.66 mAP, 18 → 25 FPS on Orin"
    assert measured_numbers(text, CITED["04_fake_quant_export"]) == []
    assert measured_numbers(text) == ["67.66 mAP", "25 FPS"]


@pytest.mark.parametrize("name", CHAPTERS)
def test_no_measured_number_typed_into_a_chapter(name):
    nb = nbformat.read(Path(NOTEBOOK_DIR) / f"{name}.ipynb", as_version=4)
    findings = notebook_findings(nb, CITED.get(name, ()))
    assert not findings, f"{name}: measured numbers typed into markdown (cell, number): {findings}"


def test_chapter_00_lists_every_chapter_from_the_chapter_list():
    from bevnb.chapters import SUMMARIES, chapter_table

    nb = nbformat.read(Path(NOTEBOOK_DIR) / "00_overview.ipynb", as_version=4)
    assert any(c.cell_type == "code" and "chapter_table()" in c.source for c in nb.cells)
    assert not any(c.cell_type == "markdown" and "| 01" in c.source for c in nb.cells), "a hand-written chapter table"
    assert [row[0] for row in chapter_table().rows] == [name[:2] for name in CHAPTERS] == [n[:2] for n in SUMMARIES]
