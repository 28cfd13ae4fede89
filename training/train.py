"""Train the camera branch's view transform and the detection head on the synthetic street (backbone and neck frozen).

    python training/train.py [--steps 1200] [--scenes 96] [--out build/training]     (or: make weights)

What is trained, and why (the numbers behind it are in the README and the training chapter):

* the **backbone** (ResNet50) and the **neck** (GeneralizedLSSFPN) stay the seeded random init, frozen with their
  BatchNorm statistics: a forward + backward through them costs several times the rest of the model on a 2-core
  CPU, while their random features already carry depth and objects well enough for the layers after them to learn
  from. Frozen, the neck's output ``[N, 256, fH, fW]`` is computed once per training scene and cached in fp16;
* the **view transform** (``dtransform``, ``depthnet``, ``downsample``) and the **detection head** (``decoder.*``,
  ``heads.object.*``) are trained fully.

Losses, as upstream: CenterHead's (``box_coder.centerhead_loss``: Gaussian focal loss on the heatmaps, L1 × 0.25
with velocity code weight 0.2 on the boxes at each object's peak cell); and BEVDepth-style lidar supervision of the
depth weights: cross-entropy against the bin of the nearest lidar depth in each feature pixel's 8×8 patch, where a
point falls, weighted 3 (BEVDepth's ``depth_loss_factor``). AdamW (lr 1e-3, weight decay 0.01), linear warm-up then
cosine decay, gradient clip 35, one scene per step.

No BEV flips: in the synthetic street a car's heading follows its lane (−y in the left lane, +y in the other two)
and its front and back look alike, so the lane is the only cue to its heading. A flip along x or y mirrors that
rule: trained with random flips, an earlier run predicted one heading, −y, for every car. Upstream's flips are
harmless on nuScenes, where a car's front and back differ.

Seeded and repeatable: scene seeds ``TRAIN_SEED + k`` (never the calibration seeds 0…, nor the held-out 1000…), the
scene order from ``--seed``. Stopped at any point, it resumes from ``<out>/last.pt`` (written every
``--save-every`` steps) with the same schedule. Writes ``<out>/log.jsonl`` (one line per step: losses, lr, seconds)
and, at the end, ``<out>/weights.pth``: MIT's key layout (``encoders.camera.vtransform.*``, ``decoder.*``,
``heads.object.*``), without the backbone and the neck, which are regenerated from their seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import bevnb
from bevnb.bevpool.reference import bev_pool_reference
from bevnb.evaluation import depth_bins, nearest_lidar_depth
from bevnb.geometry import BevPoolPlan, depth_map, plan_bev_pool
from bevnb.model.box_coder import BOX_TARGET_NAMES, BoxCoder, centerhead_loss, encode_targets
from bevnb.model.head import SMALL_WIDTHS, build_head
from bevnb.model.vtransform import DERIVED_BUFFERS

TRAIN_SEED = 100_000  # training scenes are TRAIN_SEED, TRAIN_SEED + 1, …
BACKBONE_SEED = 0  # the seeded backbone the weights are trained on (and regenerated from)
DEPTH_WEIGHT = 3.0  # BEVDepth's depth_loss_factor


class Trainee(nn.Module):
    """What is trained: the camera branch's vtransform (the neck's output comes from the cache) and the detection
    head, under MIT's names."""

    def __init__(self, camera: bevnb.CameraBranch, head: nn.Module) -> None:
        super().__init__()
        self.config = camera.config
        self.vtransform, self.head = camera.vtransform, head

    def forward(self, neck: Tensor, depth: Tensor, plan: BevPoolPlan) -> tuple[Tensor, list[dict[str, Tensor]]]:
        depth_weights, features = self.vtransform.depth_and_features(neck, depth)
        bev = bev_pool_reference(depth_weights, features, plan)
        return depth_weights, self.head(self.vtransform.downsample(bev))


def cache_scenes(camera: bevnb.CameraBranch, count: int, folder: Path) -> list[Path]:
    """Render ``count`` training scenes and keep what the frozen backbone and neck make of them (fp16), the depth
    map and the boxes. One file per scene; scenes already cached are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"scene-{TRAIN_SEED + k}.pt" for k in range(count)]
    todo = [f for f in files if not f.is_file()]
    for file in tqdm(todo, desc="caching scenes (render + backbone)", disable=not todo):
        seed = int(file.stem.split("-")[1])
        sample = bevnb.make_sample("synthetic", seed=seed)
        with torch.no_grad():
            neck = camera.image_features(sample["img"])
        record = {
            "neck": neck.half(),
            "depth": depth_map(sample, camera.config)[0],
            "boxes": sample["gt_boxes"][0],
            "labels": sample["gt_labels"][0],
        }
        torch.save(record, file.with_suffix(".tmp"))
        file.with_suffix(".tmp").rename(file)
    return files


def losses(trainee: Trainee, record: dict, plan: BevPoolPlan, coder: BoxCoder) -> dict[str, Tensor]:
    """The three losses of one cached scene, weighted: ``heatmap``, ``box``, ``depth``."""
    config = trainee.config
    depth_weights, outputs = trainee(record["neck"].float(), record["depth"], plan)
    targets = encode_targets(record["boxes"], record["labels"], coder)
    head = centerhead_loss(outputs, [targets])
    bins = depth_bins(nearest_lidar_depth(record["depth"], config), config)  # −1 where no point falls
    valid = bins >= 0
    log_p = depth_weights.clamp_min(1e-8).log().permute(0, 2, 3, 1)[valid]
    depth = F.nll_loss(log_p, bins[valid]) if valid.any() else depth_weights.new_zeros(())
    return {
        "heatmap": sum(v for k, v in head.items() if k.startswith("heatmap/")),
        "box": sum(v for k, v in head.items() if k.startswith("bbox/")),
        "depth": DEPTH_WEIGHT * depth,
    }


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("build/training"))
    p.add_argument("--scenes", type=int, default=96, help="training scenes (rendered and cached once)")
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps (one scene each)")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this many minutes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--save-every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)  # repeatable: the same weights from the same command

    camera = bevnb.build_camera_model(seed=BACKBONE_SEED)
    head = build_head(SMALL_WIDTHS, seed=BACKBONE_SEED, bev_size=camera.config.out_bev_size)
    files = cache_scenes(camera, args.scenes, args.out / "cache")
    plan = plan_bev_pool(bevnb.make_sample("zeros"), camera.config)  # one rig: one plan for every scene
    coder = BoxCoder.for_config(camera.config, SMALL_WIDTHS)
    trainee = Trainee(camera, head)
    trainee.train()
    params = [p for p in trainee.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    last, log = args.out / "last.pt", args.out / "log.jsonl"
    step = 0
    if last.is_file():
        state = torch.load(last, weights_only=True)
        trainee.load_state_dict(state["trainee"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"resumed from {last} at step {step}")
    order = random.Random(args.seed)
    schedule = [order.randrange(len(files)) for _ in range(args.steps)]

    def save() -> None:
        state = {"trainee": trainee.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        torch.save(state, last.with_suffix(".tmp"))
        last.with_suffix(".tmp").rename(last)

    start = time.monotonic()
    with log.open("a") as out, tqdm(total=args.steps, initial=step, desc="training") as bar:
        while step < args.steps:
            record = torch.load(files[schedule[step]], weights_only=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
            t0 = time.monotonic()
            parts = losses(trainee, record, plan, coder)
            total = sum(parts.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 35.0)
            optimizer.step()
            step += 1
            row = {"step": step, "lr": optimizer.param_groups[0]["lr"], "seconds": time.monotonic() - t0}
            row |= {k: round(v.item(), 5) for k, v in parts.items()}
            out.write(json.dumps(row) + "\n")
            out.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{total.item():.3f}")
            if step % args.save_every == 0 or step == args.steps:
                save()
            if args.minutes is not None and time.monotonic() - start > 60 * args.minutes:
                save()
                print(f"stopped after {args.minutes:g} minutes at step {step}; run again to resume")
                return 0
    state = trainee.state_dict()
    derived = {f"vtransform.{name}" for name in DERIVED_BUFFERS}
    weights = {f"encoders.camera.{k}": v for k, v in state.items() if k.startswith("vtransform.") and k not in derived}
    weights |= {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    meta = {"backbone_seed": BACKBONE_SEED, "steps": step, "scenes": args.scenes, "train_seed": TRAIN_SEED}
    torch.save({"state_dict": weights, "meta": meta}, args.out / "weights.pth")
    print(f"wrote {args.out / 'weights.pth'} ({len(weights)} tensors, {len(BOX_TARGET_NAMES)} box targets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
