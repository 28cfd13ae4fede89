"""Where bevnb reads shipped data and writes what it generates, from a checkout or from an installed wheel.

* ``CHECKOUT``: the repository bevnb is imported from (``pip install -e .`` or ``PYTHONPATH=src``), recognised by the
  ``pyproject.toml`` naming bevnb two folders above the package; None for a regular (non-editable) install.
* ``DATA_DIR``: the checkout's ``data/``; in a wheel the same files are package data, ``bevnb/_data``
  (``pyproject.toml`` maps ``data/`` there). ``TRAINED_WEIGHTS`` and ``TRAINING_LOG`` are the shipped output of
  ``training/train.py`` in it.
* ``build_dir(...)``: everything generated goes under one root: ``$BEVNB_BUILD_DIR`` if set, else the checkout's
  ``build/``, else ``./build`` in the current working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def find_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The repository root above ``src/bevnb``, or None when the package is not inside a bevnb checkout."""
    root = package_dir.parents[1]
    pyproject = root / "pyproject.toml"
    names_bevnb = pyproject.is_file() and re.search(r'^name = "bevnb"$', pyproject.read_text(), re.MULTILINE)
    return root if package_dir.parent.name == "src" and names_bevnb else None


CHECKOUT = find_checkout()
DATA_DIR = CHECKOUT / "data" if CHECKOUT else PACKAGE_DIR / "_data"
TRAINED_WEIGHTS = DATA_DIR / "training" / "weights.pth"  # training/train.py's weights.pth, as shipped
TRAINING_LOG = DATA_DIR / "training" / "log.jsonl"  # its loss log: one JSON line per optimizer step
TRAINING_EVALUATION = DATA_DIR / "training" / "evaluation.json"  # training/evaluate.py's scores of the weights


def build_root() -> Path:
    """The root of everything bevnb generates (see the module docstring); not created here."""
    if os.environ.get("BEVNB_BUILD_DIR"):
        return Path(os.environ["BEVNB_BUILD_DIR"])
    return CHECKOUT / "build" if CHECKOUT else Path.cwd() / "build"


def build_dir(*parts: str) -> Path:
    """``<build root>/<parts…>``, created on demand."""
    path = build_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
