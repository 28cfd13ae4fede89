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
from .tables import Table

NOTEBOOK_DIR = (CHECKOUT or Path.cwd()) / "notebooks"  # the checkout's chapters, else ./notebooks
BUDGET_S = 120.0  # per chapter, on a 2-core CPU

SUMMARIES = {  # chapter → what you build and see; chapter 00's table and the runner read this one list
    "00_overview": "the split as a picture; your environment (versions, CPU/GPU, Triton mode); the R50 constants",
    "01_load_model": "the camera branch in plain PyTorch with upstream's key names; parameters; the shape of every "
    "stage; MIT, state-dict and PTQ-pickle checkpoints",
    "02_dummy_data": "every key of the export sample; the all-zero export sample; a synthetic scene: cameras, lidar, "
    "depth maps, boxes; `.tensor` I/O",
    "03_subclass_camera": "why the cut sits at bev_pool; `SubclassCameraModule`; the fp16 export; I/O and op tables; "
    "ONNX Runtime against PyTorch; why `dynamo=False`",
    "04_fake_quant_export": "PTQ with pytorch-quantization: BN folding, Q/DQ placement, shared quantizers, "
    "calibration, the int8 export, accuracy against fp32",
    "05_graph_inspection": "both graphs through I/O, op, Q/DQ and shape tables, a module tree, drawings, Netron inline",
    "06_triton_bev_pool": "the frustum geometry and the plan; three Triton kernels (interval, cell-tile, point-block); "
    "parity; the compiler's view and a traffic model; benchmark",
    "07_split_pipeline": "ONNX Runtime → Triton → ONNX Runtime against PyTorch, stage by stage; BEV pictures; the "
    "oracle lift; stage timings",
    "08_your_own_rig": "a rig file of your own car: cameras, input size, grid; export, the plan on a non-square grid, "
    "the split and the oracle on it; CUDA-BEVFusion's example-data",
    "09_a_camera_branch_that_sees": "the detection head after the camera BEV; training curves from the log; boxes on "
    "the cameras and from above against ground truth; nuScenes mAP and depth on held-out scenes; `head.bbox.onnx`",
    "10_int8_modelopt": "the int8 recipe with TensorRT Model Optimizer beside pytorch-quantization: placement, amax "
    "name by name, accuracy and time",
    "11_onnx_simplifiers": "onnxsim and onnxslim on both int8 graphs: nodes, Q/DQ kept, parity, time; the pick",
    "12_int8_sensitivity": "each unit left in float alone, ranked by pooled-BEV SQNR and by mAP over two disjoint "
    "scene sets; the shortest float set for a target, exported",
    "13_when_int8_finds_no_boxes": "two deployments side by side, stage by stage (`bevnb diagnose`): four failures "
    "users meet (calibrated on the export sample or on another rig's frames, an fp16 overflow, a Concat at two "
    "scales), where each parts, the boxes it loses, and its fix",
}
CHAPTERS = tuple(SUMMARIES)


def chapter_table() -> Table:
    """The chapters in reading order (``SUMMARIES``): number, name, what you build and see."""
    rows = [(name[:2], name[3:].replace("_", " "), text.replace("`", "")) for name, text in SUMMARIES.items()]
    return Table(rows, ("", "chapter", "what you build and see"), title=f"the {len(rows)} chapters")


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
    failed, width = [], max(map(len, names))
    for name in names:
        try:
            seconds = execute(name, out_dir)
        except Exception as exc:  # report and go on: one broken chapter should not hide the others
            print(f"{name:{width}s} FAILED: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}")
            failed.append(name)
            continue
        flag = "" if seconds <= BUDGET_S else f"  over the {BUDGET_S:.0f} s budget"
        print(f"{name:{width}s} {seconds:6.1f} s{flag}", flush=True)
    print(f"executed copies in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
