"""Where bevnb reads shipped data and writes what it generates. bevnb runs from a checkout (``pip install -e .``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"


def build_dir(*parts: str) -> Path:
    """``build/<parts…>`` (override the root with ``BEVNB_BUILD_DIR``), created on demand."""
    path = Path(os.environ.get("BEVNB_BUILD_DIR", REPO_ROOT / "build")).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
