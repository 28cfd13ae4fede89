"""Score the same random boxes with ``bevnb.detection`` and with nuscenes-devkit's own detection code, and print
the differences of every AP, ATE, ASE and AOE.

    python benchmarks/check_metric_against_devkit.py [--venv /tmp/devkit-venv] [--scenarios 6] [--tolerance 1e-9]

nuscenes-devkit 1.2.0 pins numpy < 2, so it lives in a virtual environment of its own (``--venv``), built here with
``pip install nuscenes-devkit==1.2.0 "numpy<2"`` when it is missing; the devkit half of this script runs in that
environment (``--devkit-side``, reading and writing JSON) and imports nothing from bevnb. Exits 1 when a
difference exceeds ``--tolerance``, 2 when the devkit cannot be installed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

DEVKIT = "nuscenes-devkit==1.2.0"
DEFAULT_VENV = Path(tempfile.gettempdir()) / "devkit-venv"
THRESHOLDS = (0.5, 1.0, 2.0, 4.0)
ERRORS = ("trans_err", "scale_err", "orient_err")


def random_boxes(seed: int, samples: int = 8) -> dict:
    """A scenario: per sample, ground-truth cars and pedestrians and predictions that are noisy copies (centre
    noise up to ~5 m, size and yaw noise), misses and false positives; scores rounded to 2 digits so that ties
    occur. Seed 1 has no pedestrian predictions; seed 2 no pedestrian ground truth."""
    import torch

    g = torch.Generator().manual_seed(seed)
    gt, pred = [], []
    for _ in range(samples):
        n = int(torch.randint(0, 12, (1,), generator=g))
        labels = torch.where(torch.rand(n, generator=g) < 0.6, 0, 8)
        if seed == 2:
            labels = torch.zeros(n, dtype=torch.int64)
        xy = (torch.rand(n, 2, generator=g) - 0.5) * 100
        size = torch.where(labels[:, None] == 0, torch.tensor([4.5, 1.9, 1.6]), torch.tensor([0.7, 0.7, 1.7]))
        size = size * (0.8 + 0.4 * torch.rand(n, 3, generator=g))
        yaw = (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi
        boxes = torch.cat((xy, torch.full((n, 1), -1.8), size, yaw), dim=1)
        gt.append({"boxes": boxes, "labels": labels})

        keep = torch.rand(n, generator=g) < 0.8
        noise = torch.randn(n, 2, generator=g) * torch.rand(n, 1, generator=g) * 2.5
        copies = boxes.clone()
        copies[:, :2] += noise
        copies[:, 3:6] *= 0.7 + 0.6 * torch.rand(n, 3, generator=g)
        copies[:, 6] += torch.randn(n, generator=g) * 0.5 + math.pi * (torch.rand(n, generator=g) < 0.1)
        m = int(torch.randint(0, 5, (1,), generator=g))  # false positives anywhere
        extra = torch.cat(
            ((torch.rand(m, 2, generator=g) - 0.5) * 100, torch.full((m, 1), -1.8),
             1 + 3 * torch.rand(m, 3, generator=g), torch.rand(m, 1, generator=g) * 6 - 3), dim=1,
        )  # fmt: skip
        p_boxes = torch.cat((copies[keep], extra))
        p_labels = torch.cat((labels[keep], torch.where(torch.rand(m, generator=g) < 0.5, 0, 8)))
        scores = torch.round(torch.rand(len(p_boxes), generator=g) * 100) / 100 + 0.01
        if seed == 1:
            p_boxes, p_labels, scores = p_boxes[p_labels == 0], p_labels[p_labels == 0], scores[p_labels == 0]
        pred.append({"boxes": p_boxes, "scores": scores, "labels": p_labels})
    return {"gt": gt, "pred": pred}


def bevnb_side(scenario: dict) -> dict:
    """AP per class and threshold, ATE/ASE/AOE per class, from ``bevnb.detection``."""
    from bevnb.detection import evaluate

    metrics = evaluate(scenario["pred"], scenario["gt"], ("car", "pedestrian"))
    return {
        name: {"ap": [c.ap[t] for t in THRESHOLDS], "trans_err": c.ate, "scale_err": c.ase, "orient_err": c.aoe}
        for name, c in metrics.classes.items()
    }


def to_json(scenario: dict) -> list[dict]:
    """Per sample: gt and pred boxes as lists of floats (float64 of the float32 values) and class names."""
    from bevnb.config import CLASS_NAMES

    def boxes(part: dict) -> list[dict]:
        rows = part["boxes"].double().tolist()
        scores = part["scores"].double().tolist() if "scores" in part else [-1.0] * len(rows)
        names = [CLASS_NAMES[i] for i in part["labels"].tolist()]
        return [{"box": r, "score": s, "name": n} for r, s, n in zip(rows, scores, names, strict=True)]

    return [{"gt": boxes(g), "pred": boxes(p)} for g, p in zip(scenario["gt"], scenario["pred"], strict=True)]


def devkit_side(samples: list[dict]) -> dict:
    """The same numbers from nuscenes-devkit's ``accumulate``/``calc_ap``/``calc_tp`` (runs in the devkit venv).
    mmdet3d's ``[x, y, z_bottom, dx, dy, dz, yaw]`` → nuScenes' translation (gravity centre), size (w, l, h) =
    (dy, dx, dz) and a rotation about z by yaw."""
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.common.utils import center_distance
    from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
    from nuscenes.eval.detection.data_classes import DetectionBox
    from pyquaternion import Quaternion

    def eval_boxes(kind: str) -> EvalBoxes:
        result = EvalBoxes()
        for s, sample in enumerate(samples):
            token = f"sample{s}"
            result.add_boxes(
                token,
                [
                    DetectionBox(
                        sample_token=token,
                        translation=(b["box"][0], b["box"][1], b["box"][2] + b["box"][5] / 2),
                        size=(b["box"][4], b["box"][3], b["box"][5]),
                        rotation=tuple(Quaternion(axis=(0.0, 0.0, 1.0), angle=b["box"][6]).elements),
                        detection_name=b["name"],
                        detection_score=b["score"],
                    )
                    for b in sample[kind]
                ],
            )
        return result

    gt, pred = eval_boxes("gt"), eval_boxes("pred")
    out = {}
    for name in ("car", "pedestrian"):
        data = {th: accumulate(gt, pred, name, center_distance, th) for th in THRESHOLDS}
        out[name] = {"ap": [calc_ap(data[th], 0.1, 0.1) for th in THRESHOLDS]}
        out[name].update({e: calc_tp(data[2.0], 0.1, e) for e in ERRORS})
    return out


def ensure_devkit(venv_dir: Path) -> Path:
    """The devkit venv's python, building the venv when the devkit does not import there."""
    python = venv_dir / "bin" / "python"
    check = [str(python), "-c", "import nuscenes.eval.detection.algo"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"building {venv_dir} with {DEVKIT} …", flush=True)
    venv.create(venv_dir, with_pip=True, clear=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", DEVKIT, "numpy<2"], check=True)
    subprocess.run(check, check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the devkit's virtual environment")
    parser.add_argument("--scenarios", type=int, default=6, help="random scenarios (seeds 0 … n-1)")
    parser.add_argument("--tolerance", type=float, default=1e-9, help="largest accepted difference")
    parser.add_argument("--devkit-side", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.devkit_side:
        samples = json.loads(Path(args.devkit_side[0]).read_text())
        Path(args.devkit_side[1]).write_text(json.dumps([devkit_side(s) for s in samples]))
        return 0

    try:
        python = ensure_devkit(args.venv)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"nuscenes-devkit could not be installed in {args.venv}: {exc}", file=sys.stderr)
        return 2
    scenarios = [random_boxes(seed) for seed in range(args.scenarios)]
    ours = [bevnb_side(s) for s in scenarios]
    with tempfile.TemporaryDirectory() as tmp:
        boxes, result = Path(tmp) / "boxes.json", Path(tmp) / "devkit.json"
        boxes.write_text(json.dumps([to_json(s) for s in scenarios]))
        subprocess.run([str(python), __file__, "--devkit-side", str(boxes), str(result)], check=True)
        theirs = json.loads(result.read_text())

    worst = {"ap": 0.0, **dict.fromkeys(ERRORS, 0.0)}
    print(f"{'seed':>4}  {'class':<10}  {'AP@0.5/1/2/4 m (bevnb)':<28}  {'max |ΔAP|':>9}  {'|ΔATE|':>8}  "
          f"{'|ΔASE|':>8}  {'|ΔAOE|':>8}")  # fmt: skip
    for seed, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for name in a:
            d_ap = max(abs(x - y) for x, y in zip(a[name]["ap"], b[name]["ap"], strict=True))
            d = {e: abs(a[name][e] - b[name][e]) for e in ERRORS}
            worst["ap"] = max(worst["ap"], d_ap)
            worst.update({e: max(worst[e], d[e]) for e in ERRORS})
            aps = "/".join(f"{v:.3f}" for v in a[name]["ap"])
            print(f"{seed:>4}  {name:<10}  {aps:<28}  {d_ap:9.1e}  {d['trans_err']:8.1e}  {d['scale_err']:8.1e}  "
                  f"{d['orient_err']:8.1e}")  # fmt: skip
    print("max abs differences: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    print(json.dumps({"max_abs_diff": worst, "scenarios": args.scenarios, "devkit": DEVKIT}))
    return 0 if max(worst.values()) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
