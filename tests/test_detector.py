"""The detector (camera branch + head) and its weights file; the depth metric on hand-made inputs; the split to
boxes against PyTorch (slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import bevnb
from bevnb.config import R50
from bevnb.evaluation import DEPTH_REGIONS, depth_accuracy, depth_bins, depth_truth
from bevnb.model import CheckpointError, Detector, build_detector
from bevnb.model.camera import DERIVED_KEYS
from bevnb.paths import TRAINING_EVALUATION

LIDAR, NO_LIDAR = DEPTH_REGIONS


@pytest.fixture(scope="module")
def seeded() -> Detector:
    return build_detector(seed=0)


def trainer_file(detector: Detector, path, backbone_seed: int = 0, perturb: bool = True):
    """``detector``'s trained parts in ``training/train.py``'s layout (vtransform without the derived buffers,
    decoder, heads.object), moved off the seeded init so that a load is visible."""
    derived = {f"encoders.camera.{k}" for k in DERIVED_KEYS}
    state = {
        k: v.clone()
        for k, v in detector.state_dict().items()
        if k.startswith(("encoders.camera.vtransform.", "decoder.", "heads.object.")) and k not in derived
    }
    if perturb:
        for k, v in state.items():
            if v.is_floating_point() and k.endswith(".bias"):
                v += 0.01
    torch.save({"state_dict": state, "meta": {"backbone_seed": backbone_seed, "steps": 0}}, path)
    return path


def test_state_dict_is_mit_layout_and_parts_are_shared(seeded):
    keys = list(seeded.state_dict())
    assert {k.split(".")[0] for k in keys} == {"encoders", "decoder", "heads"}
    assert any(k.startswith("encoders.camera.backbone.") for k in keys) and not any(k.startswith("head.") for k in keys)
    assert seeded.camera.vtransform is seeded.encoders["camera"].vtransform
    assert seeded.decoder is seeded.head.decoder and not seeded.training and not seeded.head.training


def test_trainer_file_loads_with_the_backbone_from_its_seed(seeded, tmp_path):
    path = trainer_file(seeded, tmp_path / "weights.pth")
    loaded = build_detector(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert torch.equal(
        state["encoders.camera.backbone.conv1.weight"], seeded.state_dict()["encoders.camera.backbone.conv1.weight"]
    )
    assert not torch.equal(
        state["heads.object.task_heads.0.heatmap.1.bias"],
        seeded.state_dict()["heads.object.task_heads.0.heatmap.1.bias"],
    )


def test_the_camera_branch_reads_a_trainer_file_as_the_detector_does(seeded, tmp_path):
    """``build_camera_model`` (every chapter and CLI command) on a trainer file: the detector's camera branch, bit for
    bit, with the backbone and neck of the file's seed; a file without them and without a seed, or with a bad seed,
    is one line."""
    path = trainer_file(seeded, tmp_path / "weights.pth", backbone_seed=1)
    camera = bevnb.build_camera_model(path).state_dict()
    detector = build_detector(path).camera.state_dict()
    assert camera.keys() == detector.keys() and all(torch.equal(camera[k], detector[k]) for k in camera)
    other = bevnb.build_camera_model(seed=1).state_dict()
    assert all(torch.equal(camera[k], other[k]) for k in camera if k.startswith(("backbone.", "neck.")))
    assert bevnb.read_checkpoint(path).kind == "trained"
    obj = torch.load(path, weights_only=True)
    for meta, reason in (({}, "no meta['backbone_seed']"), ({"backbone_seed": -1}, "must be an integer")):
        torch.save({"state_dict": obj["state_dict"], "meta": meta}, path)
        with pytest.raises(CheckpointError) as err:
            bevnb.build_camera_model(path)
        assert "\n" not in str(err.value) and reason in str(err.value)


def test_full_mit_layout_loads_its_own_backbone(seeded, tmp_path):
    state = {k: v.clone() for k, v in seeded.state_dict().items()}
    state["encoders.camera.backbone.conv1.weight"] += 1.0
    state["encoders.lidar.backbone.conv.weight"] = torch.zeros(3)  # a fusion checkpoint's other keys are ignored
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "mit.pth")
    loaded = build_detector(tmp_path / "mit.pth").state_dict()
    assert torch.equal(loaded["encoders.camera.backbone.conv1.weight"], state["encoders.camera.backbone.conv1.weight"])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("missing", "missing (1): heads.object.task_heads.1.vel.1.bias"),
        ("unexpected", "unexpected (1): decoder.extra.weight"),
        ("misshaped", "mis-shaped (1): decoder.neck.fuse.0.weight [1]≠"),
        ("no seed", "no meta['backbone_seed']"),
        ("bad seed", "meta['backbone_seed'] must be an integer"),
        ("not a tensor", "decoder.neck.fuse.0.weight holds a str"),
    ],
)
def test_a_file_that_does_not_fit_fails_in_one_line(seeded, tmp_path, damage, reason):
    path = trainer_file(seeded, tmp_path / "w.pth", perturb=False)
    obj = torch.load(path, weights_only=True)
    state = obj["state_dict"]
    if damage == "missing":
        del state["heads.object.task_heads.1.vel.1.bias"]
    elif damage == "unexpected":
        state["decoder.extra.weight"] = torch.zeros(1)
    elif damage == "misshaped":
        state["decoder.neck.fuse.0.weight"] = torch.zeros(1)
    elif damage == "no seed":
        del obj["meta"]
    elif damage == "bad seed":
        obj["meta"]["backbone_seed"] = 1.5
    else:
        state["decoder.neck.fuse.0.weight"] = "weights"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as err:
        build_detector(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path)) and reason in str(err.value)


def test_the_same_file_builds_for_the_five_camera_rig(seeded, five_rig, tmp_path):
    path = trainer_file(seeded, tmp_path / "weights.pth")
    detector = build_detector(path, config=five_rig.config)
    assert detector.coder.map_size == five_rig.config.out_bev_size
    frustum = detector.state_dict()["encoders.camera.vtransform.frustum"]
    assert frustum.shape[1:3] == five_rig.config.feature_size


# --- depth within one bin, on hand-made inputs ------------------------------------------------------------------


def _one_pixel_case(offset: int, lidar: bool) -> dict:
    """One camera, feature pixel (1, 2) with its truth at a known bin, depth weights peaked ``offset`` bins away;
    every other pixel's truth is 0 (not counted)."""
    (iH, iW), (fH, fW), D = R50.image_size, R50.feature_size, R50.depth_bins
    lo, _, step = R50.dbound
    truth_bin = 40
    depth = lo + step * (truth_bin + 0.5)
    depth_map = torch.zeros(1, 1, iH, iW)
    camera_depth = torch.zeros(1, iH, iW)
    if lidar:
        depth_map[0, 0, 8 + 3, 16 + 5] = depth  # inside the patch of feature pixel (1, 2)
        depth_map[0, 0, 8 + 6, 16 + 1] = depth + 10.0  # a farther point in the same patch: the nearest counts
    else:
        camera_depth[0, 8 + 4, 16 + 4] = depth  # the patch centre
        camera_depth[0, 8 + 3, 16 + 3] = depth + 10.0  # elsewhere in the patch: not read
    weights = torch.full((1, D, fH, fW), 0.1 / D)
    weights[0, truth_bin + offset, 1, 2] = 0.9
    return {"depth_weights": weights, "depth_map": depth_map, "camera_depth": camera_depth}


@pytest.mark.parametrize("lidar", [True, False])
@pytest.mark.parametrize(("offset", "hit"), [(0, 1), (1, 1), (-1, 1), (2, 0), (-2, 0)])
def test_depth_within_one_bin_on_a_known_pixel(lidar, offset, hit):
    result = depth_accuracy(**_one_pixel_case(offset, lidar), config=R50)
    region, other = (LIDAR, NO_LIDAR) if lidar else (NO_LIDAR, LIDAR)
    assert result.pixels[region] == 1 and result.hits[region] == hit
    assert result.pixels[other] == 0 and math.isnan(result.share(other))
    assert result.share(region) == hit


def test_depth_truth_and_bins():
    case = _one_pixel_case(0, lidar=True)
    truth, has_lidar = depth_truth(case["depth_map"], case["camera_depth"], R50)
    assert truth.shape == (1, *R50.feature_size) and has_lidar.sum() == 1 and has_lidar[0, 1, 2]
    lo, hi, step = R50.dbound
    depths = torch.tensor([0.0, math.inf, math.nan, lo - 0.1, lo, lo + step, hi - 1e-3, hi + 1.0])
    assert depth_bins(depths, R50).tolist() == [-1, -1, -1, -1, 0, 1, R50.depth_bins - 1, -1]


# --- the split to boxes -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_five_camera_rig_runs_the_whole_split_chain_with_the_shipped_weights(five_rig, five_onnx, tmp_path):
    """The shipped weights (trained on the six-camera rig) in the five-camera configuration: images → backbone graph
    (ONNX Runtime) → plan → bev_pool → vtransform graph → head graph → decode equals PyTorch stage by stage, and
    gives PyTorch's boxes, cars among them. The camera graphs are the ones chapter 08 exports for that rig
    (``five_onnx``: the same default weights)."""
    from bevnb.evaluation import trained_detector
    from bevnb.export import export_head
    from bevnb.metrics import compare
    from bevnb.pipeline import SplitDetector
    from bevnb.subclass import io_shapes
    from bevnb.validation import FP16_MAX_REL

    detector = trained_detector(config=five_rig.config)
    for name in ("camera.backbone.onnx", "camera.vtransform.onnx"):
        (tmp_path / name).symlink_to(five_onnx / name)
    export_head(detector.head, tmp_path, config=five_rig.config, verbose=False)
    split = SplitDetector(tmp_path, config=five_rig.config)
    assert {**split.camera.backbone.shapes, **split.camera.vtransform.shapes} == {
        **io_shapes(five_rig.config)["camera.backbone.onnx"],
        **io_shapes(five_rig.config)["camera.vtransform.onnx"],
    }
    sample = bevnb.make_sample("synthetic", seed=1000, rig=five_rig)
    with torch.no_grad():
        stages = detector.camera.forward_stages(sample)
        reference = detector.decode(detector.head(stages["bev_downsampled"]))
    result = split(sample)
    compared = ("depth_map", "features", "depth_weights", "bev", "bev_downsampled")
    shapes = {stage: list(result.outputs[stage].shape) for stage in compared}
    assert shapes == {
        "depth_map": [1, 5, 1, 384, 1056],
        "features": [5, 48, 132, 80],
        "depth_weights": [5, 118, 48, 132],
        "bev": [1, 80, 256, 128],
        "bev_downsampled": [1, 80, 128, 64],
    }
    errors = {stage: compare(stages[stage], result.outputs[stage])["rel"] for stage in compared}
    assert errors["depth_map"] == 0.0
    assert max(errors["features"], errors["depth_weights"], errors["bev"]) <= 1e-4, errors
    assert errors["bev_downsampled"] <= FP16_MAX_REL, errors

    found = result.detections
    assert 0 < len(reference["boxes"]) == len(found["boxes"])
    assert (found["labels"][found["scores"] >= 0.3] == 0).any()  # the head finds cars through another rig's cameras
    assert torch.equal(reference["labels"].sort().values, found["labels"].sort().values)
    # match each reference box to the nearest found box of its class (scores that nearly tie may swap places)
    for box, score, label in zip(reference["boxes"], reference["scores"], reference["labels"], strict=True):
        same = found["labels"] == label
        distance = (found["boxes"][same, :2] - box[:2]).norm(dim=1)
        k = int(distance.argmin())
        torch.testing.assert_close(found["boxes"][same][k], box, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(found["scores"][same][k], score, atol=1e-4, rtol=1e-4)
    assert {"head", "decode"} <= set(result.timings_ms) and "heatmap_0" in result.outputs


# --- the chapter's helpers: the training log, the missing weights, the figures ---------------------------------


def test_training_log_and_missing_files_fail_in_one_line(tmp_path):
    from bevnb.evaluation import read_training_log, trained_detector

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "lr": 0.1, "heatmap": 3.0}\n\n{"step": 2, "lr": 0.2, "heatmap": 2.0}\n')
    assert read_training_log(log)["heatmap"].tolist() == [3.0, 2.0]
    for call, missing in ((read_training_log, tmp_path / "none.jsonl"), (trained_detector, tmp_path / "none.pth")):
        with pytest.raises(FileNotFoundError) as err:
            call(path=missing) if call is read_training_log else call(R50, missing)
        assert "\n" not in str(err.value) and "training/train.py" in str(err.value)


def test_detection_figures_draw_boxes_on_cameras_and_from_above(sample):
    from bevnb import viz_detection

    boxes = torch.nn.functional.pad(sample["gt_boxes"][0], (0, 2))
    found = {"boxes": boxes, "scores": torch.linspace(1.0, 0.1, len(boxes)), "labels": sample["gt_labels"][0]}
    mosaic = viz_detection.detections_mosaic(sample, found, min_score=0.5)
    assert sum(len(ax.collections) for ax in mosaic.axes) > 6  # ground truth and predictions on several cameras
    bev = viz_detection.detections_bev(sample, found, bev=torch.rand(1, 80, 180, 180))
    assert len(bev.axes[0].patches) == len(boxes) + int((found["scores"] >= 0.3).sum())
    log = {"step": torch.arange(1, 41).numpy(), "lr": torch.ones(40).numpy()}
    log |= {name: torch.rand(40).numpy() + 1 for name in viz_detection.LOSSES}
    assert len(viz_detection.training_curves(log).axes) == 4


def test_evaluate_detector_refuses_another_rig(seeded, five_rig):
    from bevnb.evaluation import evaluate_detector

    with pytest.raises(ValueError, match="another configuration"):
        evaluate_detector(seeded, [1000], rig=five_rig, progress=False)


@pytest.mark.slow
def test_the_shipped_weights_reproduce_their_recorded_scores():
    """``training/evaluate.py`` recorded the shipped weights' scores on the first held-out scenes (``evaluation.json``,
    ``subset``, the scenes chapter 09 evaluates). Evaluated again: the same ground truth, the predicted boxes within
    one, mAP and every AP within 0.01 and the depth shares within 0.2 points (another CPU may sum in another order, so
    a peak near the score threshold may come or go)."""
    from bevnb.evaluation import evaluate_detector, trained_detector

    recorded = json.loads(TRAINING_EVALUATION.read_text())["subset"]
    result = evaluate_detector(trained_detector(), recorded["seeds"], progress=False)
    assert result.seeds == recorded["seeds"]
    assert result.ground_truth == recorded["ground_truth_boxes"]
    for name, count in recorded["predicted_boxes"].items():
        assert abs(result.predicted[name] - count) <= 1, name
    assert result.mean_ap == pytest.approx(recorded["mAP"], abs=0.01)
    for name, metrics in result.metrics.classes.items():
        for threshold, ap in metrics.ap.items():
            assert ap == pytest.approx(recorded["classes"][name]["ap"][str(threshold)], abs=0.01), (name, threshold)
    for region, counts in recorded["depth_within_one_bin"].items():
        assert result.depth.pixels[region] == counts["pixels"]
        assert abs(result.depth.hits[region] - counts["hits"]) / counts["pixels"] <= 0.002, region
    table = result.table()
    assert [row[0] for row in table.rows] == ["car", "pedestrian", "mean"]
    assert table.columns[-2:] == ["GT boxes", "predicted"]


def test_the_recorded_evaluation_reads_back_as_it_was_written():
    """``evaluation.json`` ↔ ``DetectorEvaluation``: ``from_json`` then ``to_json`` is the record again, and the
    tables chapter 09 shows come from it."""
    from bevnb.evaluation import DetectorEvaluation, recorded_evaluation

    record = json.loads(TRAINING_EVALUATION.read_text())
    for part in ("all", "subset"):
        assert DetectorEvaluation.from_json(record[part]).to_json() == record[part]
    recorded = recorded_evaluation()
    assert recorded.seeds == record["all"]["seeds"] and len(recorded.seeds) >= 20
    assert recorded.table().title == f"nuScenes detection metrics on {len(recorded.seeds)} held-out scenes"
    with pytest.raises(FileNotFoundError, match="no recorded evaluation here"):
        recorded_evaluation(path=TRAINING_EVALUATION.with_name("absent.json"))
