"""The tutorial's chapters, and the headless runner behind ``make notebooks`` and the notebook test.

``python -m bevnb.chapters [--out DIR] [NAME …]`` executes chapters in order, writes the executed copies to DIR
(``build/notebooks``) and prints each chapter's wall time against its budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .paths import CHECKOUT, build_dir

NOTEBOOK_DIR = (CHECKOUT or Path.cwd()) / "notebooks"  # the checkout's chapters, else ./notebooks
BUDGET_S = 120.0  # per chapter, on a 2-core CPU

CHAPTERS = (
    "00_overview",
    "01_load_model",
    "02_dummy_data",
    "03_subclass_camera",
    "04_fake_quant_export",
    "05_graph_inspection",
    "06_triton_bev_pool",
    "07_split_pipeline",
    "08_your_own_rig",
    "09_int8_modelopt",
    "10_onnx_simplifiers",
    "11_int8_sensitivity",
)


def available() -> list[str]:
    """Chapters whose notebook exists, in reading order."""
    return [name for name in CHAPTERS if (NOTEBOOK_DIR / f"{name}.ipynb").is_file()]


def execute(name: str, out_dir: Path, timeout: float = 4 * BUDGET_S) -> float:
    """Execute ``notebooks/<name>.ipynb`` in a fresh kernel (cwd = notebooks/), save the executed copy to
    ``out_dir``, and return the wall time in seconds. A failing cell raises ``nbclient`` 's CellExecutionError."""
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    # CurveZMQ keys for the kernel's TCP sockets: without them, ipykernel warns that nothing is encrypted.
    config = Config({"KernelManager": {"transport_encryption": "auto"}})
    resources = {"metadata": {"path": str(NOTEBOOK_DIR)}}
    client = NotebookClient(nb, timeout=int(timeout), kernel_name="python3", resources=resources, config=config)
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / f"{name}.ipynb")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bevnb.chapters", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="chapters to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="where executed copies go (default build/notebooks)")
    args = parser.parse_args(argv)
    names = args.names or available()
    if not names:
        print(f"no chapter notebooks in {NOTEBOOK_DIR}: run from a bevnb checkout", file=sys.stderr)
        return 2
    unknown = sorted(set(names) - set(CHAPTERS))
    if unknown:
        print(f"unknown chapter(s): {', '.join(unknown)}; chapters are {', '.join(CHAPTERS)}", file=sys.stderr)
        return 2
    out_dir = args.out or build_dir("notebooks")
    failed = []
    for name in names:
        try:
            seconds = execute(name, out_dir)
        except Exception as exc:  # report and go on: one broken chapter should not hide the others
            print(f"{name:24s} FAILED: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}")
            failed.append(name)
            continue
        flag = "" if seconds <= BUDGET_S else f"  over the {BUDGET_S:.0f} s budget"
        print(f"{name:24s} {seconds:6.1f} s{flag}", flush=True)
    print(f"executed copies in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
