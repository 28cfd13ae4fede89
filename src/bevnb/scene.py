"""The synthetic nuScenes-like scene: the six-camera rig, the boxes, the rendered camera images and the lidar sweep.

No nuScenes data ships with bevnb, so it renders its own scene, whose ground truth is known exactly: a straight
street (textured asphalt, lane markings, sidewalks, building facades, sky) with car- and pedestrian-sized boxes.
Cameras and lidar are ray cast against the same geometry, so every pixel, every lidar point and every box agree.

Frames: the lidar frame of nuScenes' LIDAR_TOP (x right, y forward, z up, metres); see ``data/nuscenes_rig.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from .paths import DATA_DIR

RIG_PATH = DATA_DIR / "nuscenes_rig.json"

# camera axes (x right, y down, z forward) in the lidar frame for a camera looking along lidar +y
_FORWARD_CAMERA = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class Rig:
    """A calibrated camera rig plus the test-time image aug; every sample matrix is derived from it (``matrices``).

    * ``camera_names``: nuScenes order FRONT, FRONT_RIGHT, FRONT_LEFT, BACK, BACK_LEFT, BACK_RIGHT;
    * ``intrinsics [N, 3, 3]``: K in raw-image pixels (``raw_size`` = (900, 1600));
    * ``camera2lidar [N, 4, 4]``, ``lidar2ego [4, 4]``;
    * ``img_aug [4, 4]``: raw pixels → network pixels (resize, then crop), ``image_size`` = (256, 704).
    """

    camera_names: tuple[str, ...]
    intrinsics: Tensor
    camera2lidar: Tensor
    lidar2ego: Tensor
    img_aug: Tensor
    raw_size: tuple[int, int]
    image_size: tuple[int, int]

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    def matrices(self) -> dict[str, Tensor]:
        """The calibration keys of a sample, batch 1, float32, each derived from the rig the way nuScenes'
        ``get_data_info`` does: ``lidar2camera = inv(camera2lidar)``, ``lidar2image = K₄ₓ₄ @ lidar2camera``,
        ``camera2ego = lidar2ego @ camera2lidar``; ``lidar_aug_matrix`` is the test-time identity.

        Per-camera matrices are ``[1, N, 4, 4]``; ``lidar2ego`` and ``lidar_aug_matrix`` are ``[1, 4, 4]``.
        """
        N = self.num_cameras
        K = torch.eye(4, dtype=torch.float64).repeat(N, 1, 1)
        K[:, :3, :3] = self.intrinsics.double()
        camera2lidar = self.camera2lidar.double()
        lidar2camera = torch.linalg.inv(camera2lidar)
        mats = {
            "camera2ego": self.lidar2ego.double() @ camera2lidar,
            "lidar2ego": self.lidar2ego.double(),
            "lidar2camera": lidar2camera,
            "lidar2image": K @ lidar2camera,
            "camera_intrinsics": K,
            "camera2lidar": camera2lidar,
            "img_aug_matrix": self.img_aug.double().expand(N, 4, 4),
            "lidar_aug_matrix": torch.eye(4, dtype=torch.float64),
        }
        return {k: v.float().unsqueeze(0).contiguous() for k, v in mats.items()}


def _pose(rotation: Tensor, translation: list[float]) -> Tensor:
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = rotation.double()
    pose[:3, 3] = torch.tensor(translation, dtype=torch.float64)
    return pose


def _heading_rotation(heading_deg: float) -> Tensor:
    """``Rz(heading) @ _FORWARD_CAMERA``: the camera-to-lidar rotation of a level camera."""
    a = math.radians(heading_deg)
    rz = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return rz.double() @ _FORWARD_CAMERA.double()


@cache
def load_rig(path: str | Path = RIG_PATH) -> Rig:
    """Read a rig JSON (format: ``data/nuscenes_rig.json``). Raises ValueError on a missing or malformed field."""
    try:
        spec = json.loads(Path(path).read_text())
        cams = spec["cameras"]
        names = tuple(c["name"] for c in cams)
        K = torch.tensor(
            [
                [[i["fx"], 0.0, i["cx"]], [0.0, i["fy"], i["cy"]], [0.0, 0.0, 1.0]]
                for i in (c["intrinsics"] for c in cams)
            ]
        )
        camera2lidar = torch.stack(
            [
                _pose(_heading_rotation(c["camera2lidar"]["heading_deg"]), c["camera2lidar"]["translation_m"])
                for c in cams
            ]
        )
        lidar2ego = _pose(torch.tensor(spec["lidar2ego"]["rotation"]), spec["lidar2ego"]["translation_m"])
        aug, raw = spec["test_image_aug"], spec["raw_image_size"]
        img_aug = torch.eye(4)
        img_aug[0, 0] = img_aug[1, 1] = aug["resize"]
        img_aug[0, 3], img_aug[1, 3] = -aug["crop"]["x"], -aug["crop"]["y"]
        raw_size = (int(raw["height"]), int(raw["width"]))
        image_size = (int(aug["final_size"]["height"]), int(aug["final_size"]["width"]))
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a valid rig file ({type(exc).__name__}: {exc})") from None
    return Rig(
        camera_names=names,
        intrinsics=K.float(),
        camera2lidar=camera2lidar.float(),
        lidar2ego=lidar2ego.float(),
        img_aug=img_aug,
        raw_size=raw_size,
        image_size=image_size,
    )
