"""Your own rig: the rig file, the configuration it implies, samples, checkpoints from another rig, and the whole
split chain and oracle lift on the second shipped rig (five cameras, 384×1056, a 256×128 grid of 0.3 m × 0.6 m)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

import bevnb
from bevnb.cli import main
from bevnb.config import R50, CameraConfig
from bevnb.data import check_calibration, example_data_rig, load_example_data, make_sample, write_tensor
from bevnb.geometry import depth_map
from bevnb.model import CameraBranch, CheckpointError
from bevnb.model.camera import DERIVED_KEYS
from bevnb.oracle import footprint_margin, oracle_lift
from bevnb.pipeline import SplitCamera
from bevnb.rig import FIVE_CAMERA_RIG_PATH, RIG_PATH, RigError, as_rig, default_rig, load_rig
from bevnb.subclass import io_shapes


@pytest.fixture(scope="module")
def five_zeros(five_rig) -> dict:
    return make_sample("zeros", rig=five_rig)


@pytest.fixture(scope="module")
def five_sample(five_rig) -> dict:
    return make_sample("synthetic", seed=0, rig=five_rig)


@pytest.fixture(scope="module")
def r50_checkpoint(trained, tmp_path_factory):
    """The default (trained) weights, saved as a plain state dict: a checkpoint made for the 256×704, 360×360 rig."""
    path = tmp_path_factory.mktemp("ckpt") / "r50.pth"
    torch.save(trained.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def loaded(r50_checkpoint, five_rig) -> tuple[CameraBranch, str]:
    """The R50 checkpoint loaded into the five-camera configuration, and what bevnb printed while loading it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model = bevnb.build_camera_model(r50_checkpoint, config=five_rig.config)
    return model, out.getvalue()


# --- the rig file and the configuration it implies ----------------------------------------------------------------


def test_the_default_rig_file_implies_r50():
    rig = default_rig()
    assert rig.config == R50 and rig.num_cameras == 6 and rig.raw_sizes == ((900, 1600),) * 6
    assert (rig.resize, rig.crop, rig.image_size) == (0.48, (32.0, 176.0), (256, 704))
    assert as_rig() is rig and as_rig(str(RIG_PATH)).config == R50


def test_the_five_camera_rig_implies_its_configuration(five_rig):
    cfg = five_rig.config
    assert five_rig.camera_names == (
        "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_SIDE_LEFT", "CAM_SIDE_RIGHT"
    )  # fmt: skip
    assert five_rig.raw_sizes == ((1080, 1920),) * 5
    assert (cfg.num_cameras, cfg.image_size, cfg.feature_size) == (5, (384, 1056), (48, 132))
    assert (cfg.grid_size, cfg.cell_size, cfg.out_bev_size, cfg.depth_bins) == (
        (256, 128, 1),
        (0.3, 0.6, 20.0),
        (128, 64),
        118,
    )
    # resize 0.55 then crop at (0, 210): raw (1919, 1080) lands on the network image's bottom-right corner
    corner = five_rig.img_aug @ torch.tensor([1920.0, 1080.0, 1.0, 1.0])
    torch.testing.assert_close(corner[:2], torch.tensor([1056.0, 384.0]))
    torch.testing.assert_close(
        five_rig.headings_deg, torch.tensor([0.0, -60.0, 60.0, 115.0, -115.0], dtype=torch.float64)
    )
    # the front camera looks ahead and 2° down; the others are level
    axis = five_rig.camera2lidar[:, :3, 2]
    torch.testing.assert_close(axis[0], torch.tensor([0.0, math.cos(math.radians(2)), -math.sin(math.radians(2))]))
    assert axis[1:, 2].abs().max() < 1e-7


def test_the_split_io_follows_the_rig(five_rig):
    assert io_shapes(five_rig.config) == {
        "camera.backbone.onnx": {
            "img": (1, 5, 3, 384, 1056),
            "depth": (1, 5, 1, 384, 1056),
            "camera_feature": (5, 48, 132, 80),
            "camera_depth_weights": (5, 118, 48, 132),
        },
        "camera.vtransform.onnx": {"feat_in": (1, 80, 256, 128), "feat_out": (1, 80, 128, 64)},
    }
    assert io_shapes()["camera.backbone.onnx"]["camera_depth_weights"] == (6, 118, 32, 88)


def _set(path: str, value):
    """A mutation of the rig dict: ``path`` is dotted keys and list indices, e.g. ``cameras.1.intrinsics.fx``."""

    def mutate(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_set("test_image_aug.crop.y", 300), "test_image_aug.crop: columns 0…1056, rows 300…684 leave CAM_FRONT's"),
        (_set("test_image_aug.crop.x", -8), "test_image_aug.crop"),
        (_set("test_image_aug.resize", 0.5), "test_image_aug.crop"),  # 960 px wide: the 1056 px crop does not fit
        (_set("test_image_aug.final_size.height", 380), "test_image_aug.final_size: 380×1056 (height × width) must"),
        (_set("cameras.1.intrinsics.fx", 0.0), "cameras[1].intrinsics: K is not invertible (fx = 0"),
        (_set("cameras.2.camera2lidar.rotation", [[1, 0, 0], [0, 0, 1], [0, -2, 0]]), "cameras[2].camera2lidar: the"),
        (_set("lidar2ego.rotation", [[0, 1, 0], [1, 0, 0], [0, 0, 1]]), "lidar2ego: the pose is not rigid"),  # det -1
        (_set("model.ybound", [-12.8, 64.0, 0.7]), "model.ybound: (high - low) / step = 109.7 is not a whole"),
        (_set("model.x_bound", [-1, 1, 1]), "model.x_bound: unknown key"),
        (_set("cameras.0.intrinsics.cy", _DELETE), "cameras[0].intrinsics.cy: missing"),
        (_set("cameras.0.intrinsics.cy", "540"), "cameras[0].intrinsics.cy: must be a finite number"),
        (_set("cameras.3.name", "CAM_FRONT"), "cameras: need at least one camera and distinct names"),
        (_set("cameras", []), "cameras: need at least one camera"),
    ],
)
def test_a_bad_rig_file_fails_in_one_line_naming_the_field(tmp_path, mutate, field):
    spec = json.loads(FIVE_CAMERA_RIG_PATH.read_text())
    mutate(spec)
    (tmp_path / "five.json").write_text(json.dumps(spec))
    with pytest.raises(RigError) as err:
        load_rig(tmp_path / "five.json")
    message = str(err.value)
    assert message.startswith(f"five.json: {field}"), message
    assert "\n" not in message


def test_a_file_that_is_not_json_fails_in_one_line(tmp_path):
    (tmp_path / "five.json").write_text("{cameras: 5")
    with pytest.raises(RigError, match=r"five\.json: not a readable rig file \(JSONDecodeError") as err:
        load_rig(tmp_path / "five.json")
    assert "\n" not in str(err.value)


def test_a_rig_file_can_hold_rotations_and_per_camera_raw_sizes(tmp_path, five_rig):
    """``rotation`` instead of ``heading_deg``, and a camera with its own raw size: the same rig, read back."""
    spec = json.loads(FIVE_CAMERA_RIG_PATH.read_text())
    for cam, pose in zip(spec["cameras"], five_rig.camera2lidar.double(), strict=True):
        cam["camera2lidar"] = {"translation_m": pose[:3, 3].tolist(), "rotation": pose[:3, :3].tolist()}
    spec["cameras"][4]["raw_image_size"] = {"height": 1200, "width": 1920}
    (tmp_path / "rig.json").write_text(json.dumps(spec))
    rig = load_rig(tmp_path / "rig.json")
    assert torch.equal(rig.camera2lidar, five_rig.camera2lidar)
    assert rig.raw_sizes[3:] == ((1080, 1920), (1200, 1920)) and rig.config == five_rig.config
    (tmp_path / "rig.json").write_text(json.dumps(spec | {"model": {"dbound": [2.0, 61.0, 0.5]}}))
    assert load_rig(tmp_path / "rig.json").config.dbound == (2.0, 61.0, 0.5)  # read afresh: the edit is seen


# --- samples -------------------------------------------------------------------------------------------------------


def test_zero_sample_of_the_five_camera_rig(five_zeros, five_rig):
    assert five_zeros["img"].shape == (1, 5, 3, 384, 1056) and five_zeros["img"].abs().sum() == 0
    assert five_zeros["camera_intrinsics"].shape == (1, 5, 4, 4) and five_zeros["points"][0].shape == (0, 5)
    assert depth_map(five_zeros, five_rig.config).shape == (1, 5, 1, 384, 1056)
    same = make_sample("zeros", rig=FIVE_CAMERA_RIG_PATH)
    assert all(torch.equal(same[k], five_zeros[k]) for k in ("camera2lidar", "lidar2image", "img_aug_matrix"))


def test_synthetic_sample_of_the_five_camera_rig(five_sample, five_rig):
    """Rendered by the rig's five cameras: boxes in view, and the lidar depth agrees with the rendered depth."""
    assert five_sample["img"].shape == (1, 5, 3, 384, 1056)
    assert five_sample["instance_map"].shape == five_sample["camera_depth"].shape == (1, 5, 384, 1056)
    assert len(torch.unique(five_sample["instance_map"][five_sample["instance_map"] >= 0])) >= 5
    depth = depth_map(five_sample, five_rig.config)[0, :, 0]
    has = depth > 0
    rel = (depth[has] - five_sample["camera_depth"][0][has]).abs() / depth[has]
    assert has.sum() > 10_000 and rel.median() < 0.005 and (rel < 0.02).float().mean() > 0.97


def test_a_sample_with_another_camera_count_is_rejected(five_zeros, zeros_r50):
    with pytest.raises(ValueError, match=r"^img has 5 cameras, the configuration \(rig\) has 6$"):
        check_calibration(five_zeros, R50)
    with pytest.raises(ValueError, match=r"^img has 6 cameras, the configuration \(rig\) has 5$"):
        check_calibration(zeros_r50, as_rig(FIVE_CAMERA_RIG_PATH).config)


@pytest.fixture(scope="module")
def zeros_r50() -> dict:
    return make_sample("zeros")


def test_example_data_folder_with_five_cameras(tmp_path, five_zeros, five_rig):
    """An example-data folder of the five-camera rig: the camera count, names and raw sizes come from the files."""
    from PIL import Image

    for key in ("camera_intrinsics", "camera2lidar", "lidar2image", "img_aug_matrix"):
        write_tensor(tmp_path / f"{key}.tensor", five_zeros[key])
    write_tensor(tmp_path / "points.tensor", torch.tensor([[5.0, 20.0, -1.0, 10.0, 0.0]]).half())
    for i, name in enumerate(five_rig.camera_names):
        Image.new("RGB", (1920, 1080), (200, 30, 30)).save(tmp_path / f"{i}-{name.removeprefix('CAM_')}.jpg")
    rig = example_data_rig(tmp_path, like=five_rig)
    assert rig.camera_names == five_rig.camera_names and rig.raw_sizes == five_rig.raw_sizes
    assert rig.config == five_rig.config and rig.crop == five_rig.crop and rig.resize == pytest.approx(0.55)
    sample = load_example_data(tmp_path, rig)
    assert sample["img"].shape == (1, 5, 3, 384, 1056)
    assert example_data_rig(tmp_path).config.image_size == (256, 704)  # like the default rig: R50's input
    with pytest.raises(ValueError, match=r"camera_intrinsics\.tensor must be \[1, 6, 4, 4\], got \[1, 5, 4, 4\]"):
        load_example_data(tmp_path, default_rig())
    (tmp_path / "5-BACK.jpg").write_bytes((tmp_path / "0-FRONT.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"5-BACK\.jpg is a camera beyond the 5 of the calibration files"):
        example_data_rig(tmp_path)


# --- checkpoints from another rig -------------------------------------------------------------------------------------


def test_default_weights_are_the_same_for_every_rig(model, five_rig):
    five = CameraBranch(five_rig.config)
    bevnb.model.init_default_weights(five, seed=0)
    state, r50 = five.state_dict(), model.state_dict()
    learned = [k for k in state if k not in DERIVED_KEYS]
    assert len(learned) == len(state) - 4 and all(torch.equal(state[k], r50[k]) for k in learned)
    assert state["vtransform.frustum"].shape == (118, 48, 132, 3) and state["vtransform.nx"].tolist() == [256, 128, 1]
    built = bevnb.build_camera_model(config=five_rig.config).state_dict()
    assert all(torch.equal(built[k], v) for k, v in state.items())


def test_an_r50_checkpoint_loads_into_the_five_camera_rig_with_a_one_line_notice(loaded, r50_checkpoint, five_rig):
    five_model, printed = loaded
    assert printed.count("\n") == 1
    assert printed.startswith("checkpoint made for another configuration; rebuilt from this one: ")
    for change in (
        "vtransform.dx (0.3, 0.3, 20) → (0.3, 0.6, 20)",
        "vtransform.bx (-53.85, -53.85, 0) → (-38.25, -12.5, 0)",
        "vtransform.nx (360, 360, 1) → (256, 128, 1)",
        "vtransform.frustum [118, 32, 88, 3] → [118, 48, 132, 3]",
    ):
        assert change in printed
    expected = bevnb.inputs.current(rig=FIVE_CAMERA_RIG_PATH).model().state_dict()  # the trained weights, this rig
    assert all(torch.equal(v, expected[k]) for k, v in five_model.state_dict().items())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bevnb.build_camera_model(r50_checkpoint)  # into its own rig: nothing to rebuild, nothing said
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("config", "mismatch"),
    [
        (CameraConfig(out_channels=64), "vtransform.depthnet.6.weight [182, 256, 1, 1]≠[198, 256, 1, 1]"),
        (CameraConfig(dbound=(1.0, 65.0, 0.5)), "vtransform.depthnet.6.weight [208, 256, 1, 1]≠[198, 256, 1, 1]"),
    ],
)
def test_a_checkpoint_with_other_channels_or_depth_bins_still_fails_in_one_line(tmp_path, five_rig, config, mismatch):
    torch.save(CameraBranch(config).state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as err:
        bevnb.build_camera_model(tmp_path / "other.pth", config=five_rig.config)
    message = str(err.value)
    assert "\n" not in message and "mis-shaped" in message and mismatch in message
    assert "frustum" not in message  # derived buffers are rebuilt, never reported as a mismatch


# --- the split chain and the oracle on the five-camera rig --------------------------------------------------------


def test_graphs_of_another_rig_are_refused_in_one_line(onnx_dirs, five_rig):
    with pytest.raises(ValueError) as err:
        SplitCamera(onnx_dirs("fp16"), config=five_rig.config)
    message = str(err.value)
    assert message.startswith("camera.backbone.onnx was exported for another configuration (rig): ")
    assert "img [1, 6, 3, 256, 704]≠[1, 5, 3, 384, 1056]" in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_lift_on_the_five_camera_rig_puts_every_seen_box_inside_its_footprint(five_rig, five_sample, seed):
    sample = five_sample if seed == 0 else make_sample("synthetic", seed=seed, rig=five_rig)
    config = five_rig.config
    margin = footprint_margin(config)  # cell diagonal + depth-bin step: hypot(0.3, 0.6) + 0.5 m
    assert margin == pytest.approx(1.1708, abs=1e-4)
    lift = oracle_lift(sample, bevnb.plan_bev_pool(sample, config), "triton", config=config, margin=margin)
    seen = (lift.seen_pixels > 0) & lift.in_grid
    assert seen.sum() >= 5, lift.seen_pixels
    assert (lift.lifted[seen] > 0).all()
    assert (lift.share_inside[seen] >= 0.8).all(), lift.share_inside[seen]
    assert (lift.lifted[lift.seen_pixels == 0] == 0).all()  # no mass for a box nothing sees


# --- the command line -------------------------------------------------------------------------------------------


def test_inspect_shows_what_a_rig_implies(capsys):
    assert main(["inspect", "--rig", str(FIVE_CAMERA_RIG_PATH)]) == 0
    out = capsys.readouterr().out
    for text in ("[1, 5, 3, 384, 1056]", "[5, 48, 132, 80]", "[5, 118, 48, 132]", "[1, 80, 256, 128]", "CAM_SIDE_LEFT"):
        assert text in out
    assert "of 32,768 cells hit, longest interval" in out


def test_commands_reject_a_bad_rig_or_graphs_of_another_rig(tmp_path, capsys, onnx_dirs):
    (tmp_path / "bad.json").write_text(FIVE_CAMERA_RIG_PATH.read_text().replace('"y": 210', '"y": 300'))
    for command in ("export", "validate"):
        argv = [command, "--rig", str(tmp_path / "bad.json"), "--precision", "fp16"]
        assert main([*argv, "--out", str(tmp_path)] if command == "export" else argv) == 2
        assert capsys.readouterr().err.startswith(f"bevnb {command}: error: bad.json: test_image_aug.crop: ")
    argv = ["validate", "--rig", str(FIVE_CAMERA_RIG_PATH), "--precision", "fp16", "--onnx-dir", str(onnx_dirs("fp16"))]
    assert main(argv) == 2
    assert "exported for another configuration (rig)" in capsys.readouterr().err


@pytest.mark.slow
def test_export_with_a_rig_writes_the_graphs_chapter_08_uses(tmp_path, five_onnx, capsys):
    assert main(["export", "--rig", str(FIVE_CAMERA_RIG_PATH), "--out", str(tmp_path)]) == 0
    for name in ("camera.backbone.onnx", "camera.vtransform.onnx"):
        assert (tmp_path / name).read_bytes() == (five_onnx / name).read_bytes()
