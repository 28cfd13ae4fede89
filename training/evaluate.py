"""Score trained weights on held-out synthetic scenes and record the result beside them.

    python training/evaluate.py [--weights data/training/weights.pth] [--scenes 20]      (make weights runs it)

Held-out scenes are seeds ``quant.HELD_OUT_SEED …`` (never used for training nor for int8 calibration). Writes
``evaluation.json`` next to the weights: per class AP at each distance threshold, mAP, ATE, ASE, AOE, box counts,
the depth-within-one-bin shares, the seeds, and the same for the first ``--subset`` scenes alone (what chapter 09
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
from bevnb.evaluation import SceneScores, evaluate_detector
from bevnb.model import build_detector
from bevnb.paths import TRAINED_WEIGHTS, TRAINING_EVALUATION


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
    subset = evaluate_detector(detector, seeds[: args.subset], scores=scores).to_json()  # before more are added
    everything = evaluate_detector(detector, seeds[args.subset :], scores=scores)
    record = {
        "weights": args.weights.name,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "seconds": round(time.monotonic() - start, 1),
        "all": everything.to_json(),
        "subset": subset,
    }
    out = args.weights.with_name(TRAINING_EVALUATION.name)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(everything.table())
    print(everything.depth.table())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
