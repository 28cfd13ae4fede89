"""What a recorded benchmark run says about itself: when, at which commit, on what machine, with which versions and
how long it took (the ``"run"`` entry of ``benchmarks/results/precision/*.json``)."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The checkout's short commit hash, or ``"unknown"`` outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_info(start: float, packages: tuple[str, ...], **extra: float) -> dict:
    """``{"date", "commit", "machine", "versions", "seconds", **extra}`` for a run that began at ``time.monotonic()
    == start``; ``packages``: the distributions whose versions it records."""
    import torch

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "versions": {p: version(p) for p in packages},
        "seconds": round(time.monotonic() - start, 1),
        **{k: round(v, 1) for k, v in extra.items()},
    }


def write(record: dict, path: Path) -> None:
    """Write ``record`` (with its ``"run"`` entry) as indented JSON to ``path`` and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path} ({record['run']['seconds']:.0f} s)")
