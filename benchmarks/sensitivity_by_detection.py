"""Sensitivity that holds still: each unit left in float judged by detection, on two disjoint sets of held-out scenes.

    python benchmarks/sensitivity_by_detection.py [--scenes 8] [--max-loss 0.01]

Chapter 12 ranks the units of the int8 camera branch by the SQNR of one camera of one scene, which is quick but
does not hold still from run to run. This runs ``bevnb.sensitivity.analyse_by_detection`` on chapter 04's int8
model (the shipped trained weights, MSE calibration on the default frames) with the shipped head, twice: on held-out
scenes ``1000 …`` and on the next, disjoint ``--scenes`` ones. Each run: fp32, all of int8 and each of the units alone
in float, every camera, scored by nuScenes mAP over the run's scenes, each scene's own mAP (the spread) and the
pooled BEV's SQNR per scene. Then the float set that keeps the mAP lost to int8 within ``--max-loss`` on the first
run's scenes (``float_set_for_map_loss``), exported, with its predicted and its counted Q/DQ pairs.

Writes ``benchmarks/results/precision/sensitivity_by_detection.json`` (with the run's machine, versions and commit);
chapter 12 renders it. Runs for about half an hour on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from run_record import ROOT, run_info, write

RESULT = ROOT / "benchmarks" / "results" / "precision" / "sensitivity_by_detection.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=8, help="held-out scenes per run (two disjoint runs)")
    p.add_argument("--max-loss", type=float, default=0.01, help="the mAP int8 may lose against fp32")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)

    import onnx

    from bevnb import quant, sensitivity
    from bevnb.evaluation import trained_detector
    from bevnb.export import export_camera
    from bevnb.graphs import count_quantized
    from bevnb.paths import build_dir

    start = time.monotonic()
    model = quant.default_int8_model(progress=False)
    head = trained_detector().head
    first = quant.HELD_OUT_SEED
    runs = [range(first, first + args.scenes), range(first + args.scenes, first + 2 * args.scenes)]
    results = []
    for seeds in runs:
        result = sensitivity.analyse_by_detection(model, head, seeds)
        print(result.table(5))
        results.append(result)
    top = [r.ranking()[:5] for r in results]
    top_sqnr = [r.sqnr_ranking()[:5] for r in results]
    chosen, path = sensitivity.float_set_for_map_loss(model, head, results[0], args.max_loss)
    out = build_dir("precision", "int8-float-set-for-map")
    with sensitivity.left_in_float(chosen):
        predicted = quant.expected_qdq(model)
        export_camera(model, out, "int8", verbose=False)
    counted = count_quantized(onnx.load(str(out / "camera.backbone.onnx")))
    record = {
        "run": run_info(start, ("torch", "onnxruntime", "pytorch-quantization")),
        "runs": [r.to_json() for r in results],
        "top5_by_map": top,
        "top5_by_sqnr": top_sqnr,
        "top5_agree_by_map": len(set(top[0]) & set(top[1])),
        "top5_agree_by_sqnr": len(set(top_sqnr[0]) & set(top_sqnr[1])),
        "float_set": {
            "max_map_loss": args.max_loss,
            "units": [u.name for u in chosen],
            "map_path": path,
            "predicted_qdq": predicted,
            "counted_qdq": counted,
        },
    }
    write(record, args.out)
    print(f"top 5 by mAP agree on {record['top5_agree_by_map']}, by SQNR on {record['top5_agree_by_sqnr']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
