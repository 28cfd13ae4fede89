"""Score trained weights on held-out synthetic scenes and record the result beside them.

    python training/evaluate.py [--weights data/training/weights.pth] [--scenes 20]      (make weights runs it)

Held-out scenes are seeds ``quant.HELD_OUT_SEED …`` (never used for training nor for int8 calibration). Writes
``evaluation.json`` next to the weights: per class AP at each distance threshold, mAP, ATE, ASE, AOE, box counts,
the depth-within-one-bin shares, the seeds, and the same for the first ``--subset`` scenes alone (what chapter 12
evaluates live and what ``tests/test_detector.py`` reproduces). The README's and the chapters' detection numbers
come from this file or from a run of the same code.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bevnb import quant
from bevnb.evaluation import DetectorEvaluation, SceneScores, evaluate_detector
from bevnb.model import build_detector
from bevnb.paths import TRAINED_WEIGHTS


def summary(evaluation: DetectorEvaluation) -> dict:
    """An evaluation as plain JSON: per class AP per threshold and the TP errors, mAP, counts, depth shares."""
    classes = {
        name: {"ap": {str(th): ap for th, ap in m.ap.items()}, "ate": m.ate, "ase": m.ase, "aoe": m.aoe}
        for name, m in evaluation.metrics.classes.items()
    }
    depth = {
        region: {"hits": evaluation.depth.hits[region], "pixels": evaluation.depth.pixels[region]}
        for region in evaluation.depth.hits
    }
    return {
        "seeds": evaluation.seeds,
        "mAP": evaluation.mean_ap,
        "classes": classes,
        "ground_truth_boxes": evaluation.ground_truth,
        "predicted_boxes": evaluation.predicted,
        "depth_within_one_bin": depth,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=TRAINED_WEIGHTS)
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--subset", type=int, default=3, help="the first scenes, scored alone as well")
    args = p.parse_args(argv)
    detector = build_detector(args.weights)
    start = time.monotonic()
    seeds = range(quant.HELD_OUT_SEED, quant.HELD_OUT_SEED + args.scenes)
    scores = SceneScores(detector)
    subset = summary(evaluate_detector(detector, seeds[: args.subset], scores=scores))  # before more are added
    everything = evaluate_detector(detector, seeds[args.subset :], scores=scores)
    record = {
        "weights": args.weights.name,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "seconds": round(time.monotonic() - start, 1),
        "all": summary(everything),
        "subset": subset,
    }
    out = args.weights.with_name("evaluation.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(everything.table())
    print(everything.depth.table())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
