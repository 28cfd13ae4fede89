"""bevnb: the tutorial's steps without a notebook.

    bevnb export --precision {fp16,int8} --out DIR [--rig RIG.json] [--checkpoint FILE] [--seed N]
                 [--calibration-frames N|DIR] [--calibration FILE]
    bevnb inspect [FILE.onnx] [--rig RIG.json]
    bevnb validate [--precision fp16 int8] [--rig RIG.json] [--checkpoint FILE] [--calibration-frames N|DIR]
                   [--onnx-dir DIR] [--samples N] [--backend B] [--example-data DIR]
    bevnb sensitivity [--rig RIG.json] [--checkpoint FILE] [--calibration-frames N|DIR] [--cameras N …]
                      [--target-db DB] [--export DIR] [--seed N]
    bevnb diagnose REFERENCE_DIR TEST_DIR [--half {reference,test}] [--head-dir DIR] [--scenes N] [--rig RIG.json]
                   [--min-sqnr DB]
    bevnb bench bevpool [--rig RIG.json] [benchmark options, see `bevnb bench bevpool --help`]   (from a checkout)

``--rig`` names a rig file (``docs/rig_format.md``; default ``data/nuscenes_rig.json``): cameras, input size and BEV
grid, so the graphs' static shapes and the plan follow it. ``--checkpoint`` names the weights, ``--calibration-frames``
what int8 calibrates on (a number of the rig's synthetic scenes, or an example-data folder or a folder of them).
Unset, each falls back to its environment variable, ``BEVNB_RIG``, ``BEVNB_CHECKPOINT``, ``BEVNB_CALIBRATION_FRAMES``
(``bevnb.inputs``), then to the default (the shipped trained weights; ``--checkpoint seeded``: the untrained init);
every command that builds a model prints which it runs on. Every command exits 2 with a one-line reason on bad
input; ``validate`` exits 1 when a tolerance is broken, ``diagnose`` when a stage stops agreeing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inputs import Inputs


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from .export import ExportError
    from .model import CheckpointError

    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ExportError, CheckpointError, OSError) as exc:
        print(f"bevnb {args.command}: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bevnb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write camera.backbone.onnx and camera.vtransform.onnx")
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    _inputs_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the seeded init (with --checkpoint seeded)")
    p.add_argument("--calib-samples", type=int, default=None, help="synthetic scenes to calibrate int8 on")
    p.add_argument("--calibration", type=Path, help="a saved bevnb calibration (amax) to use instead")
    p.set_defaults(run=_export)

    p = sub.add_parser("inspect", help="print a graph's I/O, operators, Q/DQ and module tree, or a rig's I/O")
    p.add_argument("file", type=Path, nargs="?", help="an ONNX file")
    p.add_argument("--rig", type=Path, help="print the cameras, the graphs' I/O shapes and the plan this rig implies")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("validate", help="compare the split pipeline with the PyTorch model, stage by stage")
    p.add_argument("--precision", nargs="+", choices=("fp16", "int8"), default=["fp16", "int8"])
    _inputs_options(p)
    p.add_argument("--onnx-dir", type=Path, help="folder with both graphs (default: build/onnx/<precision>…)")
    p.add_argument("--samples", type=int, default=1, help="held-out synthetic scenes to compare on")
    p.add_argument("--backend", default="triton", help="bev_pool backend (default: triton)")
    p.add_argument(
        "--example-data", type=Path, help="CUDA-BEVFusion example-data folder to compare on instead (its cameras)"
    )
    p.set_defaults(run=_validate)

    p = sub.add_parser("sensitivity", help="rank the int8 model's units by what leaving each in float gains")
    p.add_argument("--cameras", type=int, nargs="+", default=[0], help="cameras of the held-out scene (default: 0)")
    p.add_argument("--target-db", type=float, help="then: the shortest head of the ranking that reaches this SQNR")
    p.add_argument("--export", type=Path, help="with --target-db: write the partially quantized graphs here")
    p.add_argument("--seed", type=int, default=0, help="seed of the default weights")
    _inputs_options(p)
    p.set_defaults(run=_sensitivity)

    p = sub.add_parser(
        "diagnose", help="two graph folders side by side: the first stage where they part, and the boxes"
    )
    p.add_argument("reference", type=Path, help="folder with the three graphs to trust (e.g. the fp16 export)")
    p.add_argument("test", type=Path, help="folder with the three graphs under test (e.g. the int8 export)")
    p.add_argument("--half", choices=("reference", "test"), help="run that side with fp16 numerics")
    p.add_argument("--head-dir", type=Path, help="where head.bbox.onnx lies, for folders without one")
    p.add_argument("--scenes", type=int, default=4, help="held-out synthetic scenes (default: 4)")
    p.add_argument("--min-sqnr", type=float, default=None, help="a stage agrees at this SQNR (dB) or more")
    p.add_argument("--rig", type=Path, help=RIG_HELP)
    p.set_defaults(run=_diagnose)

    p = sub.add_parser("bench", help="benchmarks")
    p.add_argument("target", choices=("bevpool",))
    p.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")
    p.set_defaults(run=_bench)
    return parser


RIG_HELP = "rig file: cameras, input size, BEV grid (default: $BEVNB_RIG, else data/nuscenes_rig.json)"


def _inputs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rig", type=Path, help=RIG_HELP)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="MIT checkpoint, camera state dict, CUDA-BEVFusion PTQ pickle, a training/train.py file, or 'seeded' "
        "for the untrained seeded init (default: $BEVNB_CHECKPOINT, else the shipped trained weights)",
    )
    p.add_argument(
        "--calibration-frames",
        help="int8 calibration: N synthetic scenes of the rig, or an example-data folder or a folder of them "
        "(default: $BEVNB_CALIBRATION_FRAMES, else 2 scenes)",
    )


def _inputs(args: argparse.Namespace, frames: str | int | None = None) -> Inputs:
    """The command's inputs (options, else environment, else defaults), printed."""
    from .inputs import current

    chosen = current(args.checkpoint, args.rig, frames if frames is not None else args.calibration_frames)
    print(chosen.describe())
    return chosen


def _export(args: argparse.Namespace) -> int:
    from . import quant
    from .export import export_camera
    from .model import build_camera_model, read_checkpoint

    if args.precision != "int8" and (args.calibration or args.calib_samples or args.calibration_frames):
        raise ValueError("--calibration, --calibration-frames and --calib-samples only apply to --precision int8")
    if args.calib_samples is not None and args.calibration_frames is not None:
        raise ValueError("give --calibration-frames or --calib-samples, not both")
    inputs = _inputs(args, args.calib_samples)
    ckpt = read_checkpoint(inputs.checkpoint) if inputs.checkpoint else None
    model = build_camera_model(ckpt, seed=args.seed, config=inputs.rig.config)
    if args.precision == "int8":
        calibration = args.calibration or (ckpt.amax if ckpt is not None and ckpt.amax else None)
        quant.prepare_int8(model, calibration=calibration, samples=inputs.frames)
    args.out.mkdir(parents=True, exist_ok=True)
    files = export_camera(model, args.out, precision=args.precision)
    for f in files.values():
        print(f"wrote {f.path} ({f.size_bytes / 1e6:.1f} MB, {f.nodes} nodes, {f.seconds:.1f} s)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .inputs import ENV_RIG

    if args.file is None and args.rig is None and os.environ.get(ENV_RIG):
        args.rig = Path(os.environ[ENV_RIG])
    if args.file is None and args.rig is None:
        raise ValueError("name an ONNX file, a rig (--rig RIG.json or $BEVNB_RIG), or both")
    if args.file is not None:
        from .graphs import describe

        print(describe(args.file))
    if args.rig is not None:
        from .data import make_sample
        from .geometry import plan_bev_pool
        from .rig import load_rig, rig_table
        from .subclass import io_table

        rig = load_rig(args.rig)
        plan = plan_bev_pool(make_sample("zeros", rig=rig), rig.config).summary()
        print(rig_table(rig), io_table(rig.config), sep="\n\n")
        X, Y, Z = rig.config.grid_size
        print(
            f"\nplan: {plan['kept points']:,} of {plan['candidate points']:,} frustum points kept, "
            f"{plan['cells hit']:,} of {X * Y * Z:,} cells hit, longest interval {plan['max points/cell']:.0f} points"
        )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .data import example_data_rig, load_example_data, make_sample
    from .inputs import ENV_FRAMES, frames_from
    from .pipeline import SplitCamera
    from .quant import HELD_OUT_SEED
    from .validation import ensure_exported, validate

    if args.onnx_dir and len(args.precision) != 1:
        raise ValueError("--onnx-dir holds one precision: name it with --precision fp16 or --precision int8")
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    inputs = _inputs(args)
    rig = inputs.rig
    if args.example_data:  # the folder's cameras; the input size and the grid of --rig
        rig = example_data_rig(args.example_data, like=rig)
        spec = args.calibration_frames or os.environ.get(ENV_FRAMES) or args.example_data
        inputs = replace(inputs, rig=rig, rig_path=args.example_data, frames=frames_from(spec, rig))
        print(f"example-data rig: {rig.num_cameras} cameras; int8 calibration frames: {inputs.frames}")
    config = rig.config
    if args.onnx_dir:
        dirs = {args.precision[0]: args.onnx_dir}
    else:
        dirs = {p: ensure_exported(p, inputs=inputs) for p in args.precision}
    splits = {precision: SplitCamera(path, args.backend, config) for precision, path in dirs.items()}
    if args.example_data:
        samples = {"example-data": load_example_data(args.example_data, rig)}
    else:
        seeds = range(HELD_OUT_SEED, HELD_OUT_SEED + args.samples)  # never used for calibration
        samples = {f"synthetic-{s}": make_sample("synthetic", seed=s, rig=rig) for s in seeds}
    result = validate(inputs.model(), splits, samples)
    print(result.table())
    print()
    print(result.timing_table())
    for failure in result.failures:
        print(f"FAILED: {failure}")
    print("split pipeline OK" if result.ok else f"{len(result.failures)} tolerance check(s) failed")
    return 0 if result.ok else 1


def _sensitivity(args: argparse.Namespace) -> int:
    from . import quant, sensitivity
    from .data import make_sample
    from .export import export_camera

    inputs = _inputs(args)
    count = inputs.rig.num_cameras
    if any(not 0 <= c < count for c in args.cameras):
        raise ValueError(f"--cameras must be among 0 … {count - 1}, got {args.cameras}")
    if args.export and args.target_db is None:
        raise ValueError("--export writes the graph of --target-db's float set: give --target-db too")
    model = quant.default_int8_model(inputs, seed=args.seed)
    held_out = make_sample("synthetic", seed=quant.HELD_OUT_SEED, rig=inputs.rig)
    result = sensitivity.analyse(model, held_out, args.cameras)
    print(result.table())
    if args.target_db is not None:
        chosen, path = result.shortest_float_set(args.target_db)
        total, removed = (sum(u.qdq_pairs for u in units) for units in (result.units, chosen))
        print(
            f"left in float for {args.target_db:g} dB (pooled BEV {path[-1]:.2f} dB):",
            ", ".join(u.name for u in chosen),
        )
        print(f"Q/DQ pairs in camera.backbone.onnx: {total} → {total - removed}")
        if args.export:
            args.export.mkdir(parents=True, exist_ok=True)
            with sensitivity.left_in_float(chosen):
                export_camera(model, args.export, precision="int8")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from .diagnosis import MIN_SQNR_DB, Graphs, diagnose
    from .inputs import current
    from .quant import HELD_OUT_SEED

    if args.scenes < 1:
        raise ValueError(f"--scenes must be at least 1, got {args.scenes}")
    rig = current(rig=args.rig).rig  # --rig, else $BEVNB_RIG, else the default rig
    sides = [
        Graphs(d, args.half == side, head_dir=args.head_dir)
        for d, side in ((args.reference, "reference"), (args.test, "test"))
    ]
    seeds = range(HELD_OUT_SEED, HELD_OUT_SEED + args.scenes)  # never used for calibration
    result = diagnose(*sides, seeds, rig, min_sqnr_db=args.min_sqnr if args.min_sqnr is not None else MIN_SQNR_DB)
    print(result.table(), result.boxes_table(), result.verdict(), sep="\n\n")
    return 1 if result.broken else 0


def _bench(args: argparse.Namespace) -> int:
    """Run the checkout's ``benchmarks/bev_pool.py``: the harness is not part of the installed package."""
    import runpy

    from .inputs import ENV_RIG
    from .paths import CHECKOUT

    if os.environ.get(ENV_RIG) and "--rig" not in args.options:
        args.options = [*args.options, "--rig", os.environ[ENV_RIG]]

    script = CHECKOUT / "benchmarks" / "bev_pool.py" if CHECKOUT else None
    if script is None or not script.is_file():
        raise FileNotFoundError("the benchmark runs from a checkout (benchmarks/bev_pool.py); this bevnb has none")
    return runpy.run_path(str(script))["main"](args.options)


if __name__ == "__main__":
    sys.exit(main())
