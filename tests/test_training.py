"""training/train.py: why it does not flip, and a run that stops and resumes into the same weights."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch

from bevnb.paths import CHECKOUT

SCRIPT = CHECKOUT / "training" / "train.py" if CHECKOUT else None
pytestmark = pytest.mark.skipif(SCRIPT is None or not SCRIPT.is_file(), reason="training/ lives in a checkout")


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("bevnb_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bevnb_train"] = module
    spec.loader.exec_module(module)
    return module


def test_a_cars_lane_gives_its_heading_so_training_does_not_flip(train):
    """Why train.py does not flip the BEV: in the synthetic street a car's heading follows its lane (−y left of the
    ego car, +y in the other two lanes), a rule a flip along x or y would invert."""
    from bevnb.scene import LANE_WIDTH, random_scene

    for seed in range(train.TRAIN_SEED, train.TRAIN_SEED + 4):
        scene = random_scene(seed)
        cars = scene.boxes[scene.labels == 0]
        expected = torch.where(cars[:, 0] < -LANE_WIDTH / 2, -math.pi / 2, math.pi / 2)  # the left lane
        assert len(cars) > 0 and (cars[:, 6] - expected).abs().max() < math.radians(4.0) + 1e-6


@pytest.mark.slow
def test_a_stopped_run_resumes_into_the_weights_of_an_unbroken_one(train, tmp_path):
    """Two steps in one go, and a run stopped after its first step (``--minutes 0``) then resumed: the same weights,
    bit for bit, in MIT's keys."""
    args = ["--scenes", "1", "--steps", "2", "--warmup", "1", "--save-every", "5"]
    assert train.main(["--out", str(tmp_path / "a"), *args]) == 0
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cache").symlink_to(tmp_path / "a" / "cache")  # the same cached scene, not rendered twice
    assert train.main(["--out", str(tmp_path / "b"), *args, "--minutes", "0"]) == 0
    assert not (tmp_path / "b" / "weights.pth").exists()
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 1
    assert train.main(["--out", str(tmp_path / "b"), *args]) == 0
    a = torch.load(tmp_path / "a" / "weights.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "weights.pth", weights_only=True)
    assert a["meta"]["steps"] == b["meta"]["steps"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in a["state_dict"]}
    assert prefixes == {"encoders.camera", "decoder.backbone", "decoder.neck", "heads.object"}
    assert not any(k.startswith(("encoders.camera.backbone.", "encoders.camera.neck.")) for k in a["state_dict"])
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2]
    assert all(math.isfinite(row[k]) for row in log for k in ("heatmap", "box", "depth"))
