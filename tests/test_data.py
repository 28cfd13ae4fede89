"""Sample dicts, calibration checks, the .tensor format and the example-data loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevnb.config import R50
from bevnb.data import (
    SAMPLE_KEYS,
    TENSOR_MAGIC,
    check_calibration,
    denormalize_image,
    load_example_data,
    make_sample,
    read_tensor,
    sample_table,
    write_tensor,
)
from bevnb.geometry import depth_map
from bevnb.rig import load_rig


@pytest.fixture(scope="module")
def zeros() -> dict:
    return make_sample("zeros")


def test_zero_sample_has_upstream_keys_and_shapes(zeros):
    N, (iH, iW) = R50.num_cameras, R50.image_size
    assert set(zeros) == set(SAMPLE_KEYS)
    assert zeros["img"].shape == (1, N, 3, iH, iW) and zeros["img"].dtype == torch.float32
    assert zeros["img"].abs().sum() == 0
    assert len(zeros["points"]) == 1 and zeros["points"][0].shape == (0, 5)
    for key in ("camera2ego", "lidar2camera", "lidar2image", "camera_intrinsics", "camera2lidar", "img_aug_matrix"):
        assert zeros[key].shape == (1, N, 4, 4) and zeros[key].dtype == torch.float32, key
    assert zeros["lidar2ego"].shape == (1, 4, 4)
    assert torch.equal(zeros["lidar_aug_matrix"], torch.eye(4)[None])


def test_zero_sample_depth_is_the_all_zero_export_input(zeros):
    depth = depth_map(zeros)
    assert depth.shape == (1, 6, 1, 256, 704)
    assert depth.count_nonzero() == 0


def test_rig_matrices_follow_nuscenes_conventions(zeros):
    aug = zeros["img_aug_matrix"][0, 0]
    assert torch.equal(aug[:2, :2], 0.48 * torch.eye(2)) and aug[:2, 3].tolist() == [-32.0, -176.0]
    # lidar2image = K @ lidar2camera, camera2ego = lidar2ego @ camera2lidar
    torch.testing.assert_close(zeros["lidar2image"], zeros["camera_intrinsics"] @ zeros["lidar2camera"])
    torch.testing.assert_close(zeros["camera2ego"], zeros["lidar2ego"][:, None] @ zeros["camera2lidar"])
    # the front camera looks along lidar +y and sits ~1.5 m above the ground, ~1.7 m ahead of the ego origin
    front = zeros["camera2lidar"][0, 0]
    torch.testing.assert_close(front[:3, 2], torch.tensor([0.0, 1.0, 0.0]))
    assert 1.4 < zeros["camera2ego"][0, 0, 2, 3] < 1.6 and 1.6 < zeros["camera2ego"][0, 0, 0, 3] < 1.8
    assert load_rig().camera_names == (
        "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"
    )  # fmt: skip


def test_make_sample_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of zeros, synthetic, got 'nuscenes'"):
        make_sample("nuscenes")


# --------------------------------------------------------------------------------------------- calibration checks


def _broken(sample: dict, key: str, value) -> dict:
    bad = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sample.items()}
    bad[key] = value
    return bad


def test_check_calibration_accepts_the_rig_in_float32_and_float64(zeros):
    check_calibration(zeros)
    check_calibration({k: v.double() if isinstance(v, torch.Tensor) else v for k, v in zeros.items()})


@pytest.mark.parametrize(
    ("key", "make_bad", "message"),
    [
        ("camera_intrinsics", lambda s: s["camera_intrinsics"][:, :5], r"camera_intrinsics must be \[1, 6, 4, 4\]"),
        ("lidar_aug_matrix", lambda s: torch.eye(4), r"lidar_aug_matrix must be \[1, 4, 4\]"),
        ("img", lambda s: s["img"][..., :700], r"img must be \[B, N, 3, 256, 704\], got \[1, 6, 3, 256, 700\]"),
        ("points", lambda s: [torch.zeros(10, 4)], r"points\[0\] must be \[P, 5\]"),
        ("points", lambda s: torch.zeros(10, 5), r"points must be a list of 1 tensors"),
        ("camera2lidar", lambda s: s["camera2lidar"].index_fill(3, torch.tensor([3]), float("nan")), "NaN or inf"),
    ],
)
def test_check_calibration_rejects_bad_shapes_and_nan(zeros, key, make_bad, message):
    bad = _broken(zeros, key, make_bad(zeros))
    with pytest.raises(ValueError, match=message) as err:
        check_calibration(bad)
    assert "\n" not in str(err.value)


def test_check_calibration_rejects_singular_intrinsics(zeros):
    K = zeros["camera_intrinsics"].clone()
    K[0, 4, 1, 1] = 0.0  # fy = 0: a singular K
    with pytest.raises(ValueError, match=r"camera_intrinsics\[0, 4\] is singular or has a non-positive focal"):
        check_calibration(_broken(zeros, "camera_intrinsics", K))


def test_check_calibration_rejects_inconsistent_matrices(zeros):
    l2i = zeros["lidar2image"].clone()
    l2i[0, 2, 0, 3] += 5.0  # a 5 px shift in one camera
    with pytest.raises(ValueError, match="lidar2image is not camera_intrinsics @ lidar2camera"):
        check_calibration(_broken(zeros, "lidar2image", l2i))
    c2l = zeros["camera2lidar"].clone()
    c2l[0, 1, :3, :3] *= 1.1
    with pytest.raises(ValueError, match="camera2lidar rotations must be orthonormal"):
        check_calibration(_broken(zeros, "camera2lidar", c2l))
    aug = zeros["img_aug_matrix"].clone()
    aug[0, 3, 0, 0] = 0.0
    with pytest.raises(ValueError, match="img_aug_matrix has a singular 3×3 part"):
        check_calibration(_broken(zeros, "img_aug_matrix", aug))


def test_check_calibration_names_missing_keys(zeros):
    bad = dict(zeros)
    del bad["lidar2image"]
    with pytest.raises(ValueError, match="sample lacks lidar2image"):
        check_calibration(bad)


# ------------------------------------------------------------------------------------------------- .tensor files


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.int32, torch.int64, torch.uint8])
def test_tensor_round_trip(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    value = (torch.rand(3, 7, 5, generator=g) * 100).to(dtype)
    path = write_tensor(tmp_path / "x.tensor", value)
    back = read_tensor(path)
    assert back.dtype == dtype and torch.equal(back, value)
    assert path.stat().st_size == 12 + 3 * 4 + value.numel() * value.element_size()


def test_tensor_layout_matches_cuda_bevfusion(tmp_path):
    """A [1, 6, 4, 4] fp32 matrix file is 412 bytes: header [magic, 4, 3], dims, data (upstream tool/tensor.py)."""
    path = write_tensor(tmp_path / "m.tensor", torch.arange(96, dtype=torch.float32).view(1, 6, 4, 4))
    raw = path.read_bytes()
    assert len(raw) == 412
    assert np.frombuffer(raw, "<i4", count=7).tolist() == [TENSOR_MAGIC, 4, 3, 1, 6, 4, 4]
    assert np.frombuffer(raw, "<f4", offset=28)[5] == 5.0
    points = write_tensor(tmp_path / "p.tensor", torch.zeros(242180, 5, dtype=torch.float16))
    assert points.stat().st_size == 2_421_820


def test_tensor_errors_are_clear(tmp_path):
    good = write_tensor(tmp_path / "x.tensor", torch.zeros(2, 3))
    raw = good.read_bytes()
    (tmp_path / "magic.tensor").write_bytes(b"\x00\x00\x00\x00" + raw[4:])
    with pytest.raises(ValueError, match=r"not a .tensor file \(magic 0x00000000, expected 0x33ff1101\)"):
        read_tensor(tmp_path / "magic.tensor")
    (tmp_path / "short.tensor").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match=r"header says \[2, 3\] float32 = 44 bytes in all, the file has 40 bytes"):
        read_tensor(tmp_path / "short.tensor")
    (tmp_path / "code.tensor").write_bytes(raw[:8] + np.int32(42).tobytes() + raw[12:])
    with pytest.raises(ValueError, match="unknown dtype code 42"):
        read_tensor(tmp_path / "code.tensor")
    (tmp_path / "tiny.tensor").write_bytes(raw[:6])
    with pytest.raises(ValueError, match=r"too short for a \.tensor header"):
        read_tensor(tmp_path / "tiny.tensor")
    with pytest.raises(ValueError, match=r"the \.tensor format stores .* got torch\.bool"):
        write_tensor(tmp_path / "b.tensor", torch.zeros(3, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------- example-data


def _write_example_data(directory, sample: dict, points: torch.Tensor) -> None:
    """An example-data folder as CUDA-BEVFusion ships it: six raw JPEGs, four matrices, fp16 points. Each image is
    black left of x = 800 and above y = 600 (raw pixels), so the resize + crop can be located."""
    from PIL import Image

    for key in ("camera_intrinsics", "camera2lidar", "lidar2image", "img_aug_matrix"):
        write_tensor(directory / f"{key}.tensor", sample[key])
    write_tensor(directory / "points.tensor", points.half())
    raw = np.zeros((900, 1600, 3), dtype=np.uint8)
    raw[:, 800:, 0] = 255
    raw[600:, :, 1] = 255
    for i, name in enumerate(load_rig().camera_names):
        Image.fromarray(raw).save(directory / f"{i}-{name.removeprefix('CAM_')}.jpg", quality=95)


def test_load_example_data_builds_the_same_sample(tmp_path, zeros):
    points = torch.tensor([[10.0, 20.0, -1.5, 30.0, 0.0], [-5.0, 3.0, 0.5, 200.0, 0.05]])
    _write_example_data(tmp_path, zeros, points)
    sample = load_example_data(tmp_path)
    assert set(sample) == set(SAMPLE_KEYS)
    for key in ("camera_intrinsics", "camera2lidar", "lidar2image", "img_aug_matrix", "lidar2camera"):
        torch.testing.assert_close(sample[key], zeros[key], msg=key)
    assert torch.equal(sample["lidar_aug_matrix"], torch.eye(4)[None])
    # without lidar2ego/camera2ego files the ego frame is the lidar frame; with them, they are read
    assert torch.equal(sample["lidar2ego"], torch.eye(4)[None])
    torch.testing.assert_close(sample["camera2ego"], zeros["camera2lidar"])
    for key in ("lidar2ego", "camera2ego"):
        write_tensor(tmp_path / f"{key}.tensor", zeros[key])
    with_ego = load_example_data(tmp_path)
    assert torch.equal(with_ego["lidar2ego"], zeros["lidar2ego"]) and torch.equal(
        with_ego["camera2ego"], zeros["camera2ego"]
    )
    assert sample["points"][0].dtype == torch.float32
    torch.testing.assert_close(sample["points"][0], points.half().float())
    rgb = denormalize_image(sample["img"][0, 3])  # [3, 256, 704]
    # raw column 800 → 800·0.48 - 32 = 352; raw row 600 → 600·0.48 - 176 = 112
    assert rgb.shape == (3, 256, 704)
    red_from = int((rgb[0].mean(0) > 0.5).nonzero()[0])
    green_from = int((rgb[1].mean(1) > 0.5).nonzero()[0])
    assert (red_from, green_from) == (352, 112)


def test_load_example_data_errors(tmp_path, zeros):
    with pytest.raises(ValueError, match="is not a directory"):
        load_example_data(tmp_path / "nowhere")
    _write_example_data(tmp_path, zeros, torch.zeros(3, 5))
    (tmp_path / "2-FRONT_LEFT.jpg").unlink()
    with pytest.raises(ValueError, match=r"camera 2 needs one image 2-<NAME>\.jpg, found none"):
        load_example_data(tmp_path)
    write_tensor(tmp_path / "camera2lidar.tensor", zeros["camera2lidar"][:, :4])
    with pytest.raises(ValueError, match=r"camera2lidar\.tensor must be \[1, 6, 4, 4\], got \[1, 4, 4, 4\]"):
        load_example_data(tmp_path)


def test_sample_table_lists_every_key(zeros):
    table = sample_table(zeros)
    assert [row[0] for row in table.rows] == list(SAMPLE_KEYS)
    assert table.rows[0][1:3] == ["[1, 6, 3, 256, 704]", "float32"]
    assert table.rows[1][1] == "list of [0, 5]"
