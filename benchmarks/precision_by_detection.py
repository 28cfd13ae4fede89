"""int8 and fp16 judged by detection: one table on held-out scenes, and mAP against the number of calibration scenes.

    python benchmarks/precision_by_detection.py [--scenes 20] [--calibration 1 2 8 32]

Every side is a folder of exported graphs run through the deployed pipeline in ONNX Runtime (backbone graph → bev_pool
→ vtransform graph → head graph → boxes) beside the fp32 graphs, on the same held-out scenes
(``bevnb.diagnosis.diagnose_many``): fp16 numerics (``numerics.half_rounded``), int8 with pytorch-quantization (MSE,
chapter 04's recipe) calibrated on each number of synthetic scenes in ``--calibration``, int8 with ModelOpt (max,
chapter 10), the partially quantized graph (chapter 12's float set for +3 dB), and two of the failures users meet
(``bevnb.failures``): calibrated on another rig's frames (the five-camera rig's), and the neck's Concats with inputs at
two scales; their fix is the default pytorch-quantization row. Per side: nuScenes AP per class,
ATE/ASE/AOE, boxes, the SQNR against fp32 at each graph boundary, the share of feature pixels whose most likely
depth bin is fp32's, and the first stage below ``diagnosis.MIN_SQNR_DB`` (``diagnosis.side_summary``).

Writes ``benchmarks/results/precision/precision_by_detection.json`` (with the run's machine, versions and commit;
not beside the bev_pool results, which chapter 06 reads as a set); chapter 13 renders it. Runs for minutes on a
2-core CPU (calibrations, exports, and every side on every scene).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from run_record import ROOT, run_info, write

RESULT = ROOT / "benchmarks" / "results" / "precision" / "precision_by_detection.json"


def build_sides(calibration: list[int]) -> tuple[dict, dict[str, str], dict[str, dict[str, str]]]:
    """Export every side's graphs under ``build/precision`` → ``({"fp32": Graphs, label: (Graphs, calibration scenes
    or None), …}, {calibration scenes: label of the pytorch-quantization side calibrated on them}, {failure: {"side":
    its label, "fix": the label of the side that fixes it}})``."""
    import bevnb
    from bevnb import failures, quant, sensitivity
    from bevnb import quant_modelopt as qm
    from bevnb.diagnosis import Graphs
    from bevnb.evaluation import trained_detector
    from bevnb.export import export_head
    from bevnb.paths import TRAINED_WEIGHTS, build_dir
    from bevnb.rig import FIVE_CAMERA_RIG_PATH

    head_dir = build_dir("precision", "head")
    export_head(trained_detector().head, head_dir, verbose=False)

    def graphs(model: bevnb.CameraBranch, name: str, precision: str = "int8", **kw: object) -> Graphs:
        out = build_dir("precision", name)
        bevnb.export_camera(model, out, precision, verbose=False)
        return Graphs(out, head_dir=head_dir, **kw)

    weights = bevnb.build_camera_model(TRAINED_WEIGHTS)
    sides = {"fp16 numerics": (graphs(weights, "fp16", "fp16", half=True, label="fp16 numerics"), None)}
    default, sweep = None, {}
    for n in calibration:
        model = quant.quantize_camera(bevnb.build_camera_model(TRAINED_WEIGHTS))
        quant.calibrate(model, n, "mse", progress=False)
        label = f"int8, pytorch-quantization (MSE, {n} scene{'s' if n > 1 else ''})"
        sides[label] = (graphs(model, f"int8-{n}", label=label), n)
        sweep[str(n)] = label
        if n == quant.DEFAULT_CALIB_SAMPLES:
            default = model
    scenes = quant.DEFAULT_CALIB_SAMPLES
    other = quant.quantize_camera(bevnb.build_camera_model(TRAINED_WEIGHTS))
    quant.calibrate(other, quant.synthetic_inputs(scenes, rig=FIVE_CAMERA_RIG_PATH), "mse", progress=False)
    other_label = f"int8, calibrated on the five-camera rig's frames (MSE, {scenes} scenes)"
    sides[other_label] = (graphs(other, "int8-other-rig", label=other_label), scenes)
    unshared = failures.concat_scales_unshared(quant.quantize_camera(bevnb.build_camera_model(TRAINED_WEIGHTS)))
    quant.calibrate(unshared, scenes, "mse", progress=False)
    label = f"int8, Concat inputs at two scales (MSE, {scenes} scenes)"
    sides[label] = (graphs(unshared, "int8-unshared-concat", label=label), scenes)
    fix = sweep.get(str(scenes))
    failed = {"calibrated on another rig's frames": other_label, "Concat inputs at two scales": label}
    mo = qm.quantize_camera_modelopt(bevnb.build_camera_model(TRAINED_WEIGHTS))
    qm.calibrate_modelopt(mo, quant.DEFAULT_CALIB_SAMPLES, "max", progress=False)
    label = f"int8, ModelOpt (max, {quant.DEFAULT_CALIB_SAMPLES} scenes)"
    sides[label] = (graphs(mo, "int8-modelopt", label=label), quant.DEFAULT_CALIB_SAMPLES)
    if default is not None:  # chapter 12: the float set that brings the front camera's pooled BEV +3 dB closer
        held_out = bevnb.make_sample("synthetic", seed=quant.HELD_OUT_SEED)
        analysis = sensitivity.analyse(default, held_out, cameras=(0,), progress=False)
        chosen, _ = analysis.shortest_float_set(analysis.baseline["bev"] + 3.0)
        label = f"partial int8 ({len(chosen)} units in float, chapter 12)"
        with sensitivity.left_in_float(chosen):
            sides[label] = (graphs(default, "int8-partial", label=label), quant.DEFAULT_CALIB_SAMPLES)
    return (
        {"fp32": Graphs(build_dir("precision", "fp16"), head_dir=head_dir, label="fp32"), **sides},
        sweep,
        {failure: {"side": side, "fix": fix} for failure, side in failed.items()},
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=20, help="held-out scenes (seeds 1000 …)")
    p.add_argument("--calibration", type=int, nargs="+", default=[1, 2, 8, 32], help="calibration scene counts")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)

    from bevnb import quant
    from bevnb.diagnosis import diagnose_many, side_summary

    start = time.monotonic()
    built, sweep, failed = build_sides(args.calibration)
    reference = built.pop("fp32")
    export_seconds = time.monotonic() - start
    seeds = range(quant.HELD_OUT_SEED, quant.HELD_OUT_SEED + args.scenes)
    diagnoses = diagnose_many(reference, [g for g, _ in built.values()], seeds)
    sides = {}
    for (label, (_, calibration)), d in zip(built.items(), diagnoses, strict=True):
        sides[label] = {"calibration_scenes": calibration, **side_summary(d)}
        print(d.verdict())
    record = {
        "run": run_info(
            start, ("torch", "onnxruntime", "pytorch-quantization", "nvidia-modelopt"), export_seconds=export_seconds
        ),
        "scenes": list(seeds),
        "min_sqnr_db": diagnoses[0].min_sqnr_db,
        "fp32": diagnoses[0].scores["fp32"].to_json(),
        "calibration_sweep": sweep,
        "failures": failed,
        "sides": sides,
    }
    write(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
