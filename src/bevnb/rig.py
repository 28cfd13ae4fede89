"""A deployment rig: what a user knows about their car and model, in one JSON file (format: ``docs/rig_format.md``).

* per camera: name, raw image size, intrinsics (fx, fy, cx, cy in raw pixels) and pose (camera → lidar);
* the lidar pose (lidar → ego);
* the test-time image aug: resize, then crop to the network input (CUDA-BEVFusion applies one aug to every camera);
* the model's BEV grid (``xbound``, ``ybound``, ``zbound``) and depth bins (``dbound``).

Everything else is derived from it: the ``CameraConfig`` of the model (``Rig.config``; feature map = input / 8) and
the calibration matrices of a sample (``Rig.matrices``). Shipped rigs: ``data/nuscenes_rig.json`` (the default: six
cameras, 1600×900 → 256×704, a 360×360 grid of 0.3 m cells) and ``data/five_camera_rig.json`` (five cameras and no
rear one, 1920×1080 → 384×1056, a 256×128 grid of 0.3 m × 0.6 m cells).

A rig that cannot work raises ``RigError`` with one line naming the file and the field, e.g.
``five.json: test_image_aug.crop: …``: a crop outside the resized image, an input size not divisible by 8,
non-invertible intrinsics, a pose that is not rigid, bounds that do not split into whole cells.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from .config import R50, Bound, CameraConfig, ConfigError
from .paths import DATA_DIR
from .tables import Table

RIG_PATH = DATA_DIR / "nuscenes_rig.json"
FIVE_CAMERA_RIG_PATH = DATA_DIR / "five_camera_rig.json"

# camera axes (x right, y down, z forward) in the lidar frame for a level camera looking along lidar +y
_FORWARD_CAMERA = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
_RIGID_TOLERANCE = 1e-4  # max |RᵀR − I| and |det R − 1| of a rotation read from a file
MAX_RIG_FILE_BYTES = 1 << 20  # a rig is a few kB; a larger file is refused before it is parsed
MAX_RAW_SIDE = 1 << 15  # raw image height and width, pixels
MAX_RESIZE = 64.0  # the test-time resize, raw → network pixels
# CameraConfig field → the rig file's field that sets it
_CONFIG_FIELDS = {"image_size": "test_image_aug.final_size", "num_cameras": "cameras"}


class RigError(ValueError):
    """A rig that cannot work: one line naming the field (``cameras[1].intrinsics``, ``test_image_aug.crop`` …)."""


@dataclass(frozen=True, eq=False)  # tensors inside: equality is identity
class Rig:
    """A calibrated camera rig, its test-time image aug and the model's grid; checked on construction.

    * ``camera_names``, ``raw_sizes`` (per camera ``(height, width)`` of the raw image);
    * ``intrinsics [N, 3, 3]``: K in raw-image pixels; ``camera2lidar [N, 4, 4]``; ``lidar2ego [4, 4]``;
    * ``resize``, ``crop`` ``(x, y)``: raw pixels → network pixels, ``image_size`` ``(iH, iW)``;
    * ``xbound``, ``ybound``, ``zbound``, ``dbound``: ``(low, high, step)`` as in ``CameraConfig``.
    """

    name: str
    camera_names: tuple[str, ...]
    raw_sizes: tuple[tuple[int, int], ...]
    intrinsics: Tensor
    camera2lidar: Tensor
    lidar2ego: Tensor
    resize: float
    crop: tuple[float, float]
    image_size: tuple[int, int]
    xbound: Bound = R50.xbound
    ybound: Bound = R50.ybound
    zbound: Bound = R50.zbound
    dbound: Bound = R50.dbound

    def __post_init__(self) -> None:
        N = len(self.camera_names)
        if N == 0 or len(set(self.camera_names)) != N:
            raise RigError(f"cameras: need at least one camera and distinct names, got {list(self.camera_names)}")
        if (len(self.raw_sizes), self.intrinsics.shape, self.camera2lidar.shape) != (N, (N, 3, 3), (N, 4, 4)):
            raise RigError(
                f"cameras: {N} names but {len(self.raw_sizes)} raw sizes, intrinsics {list(self.intrinsics.shape)}"
                f" and camera2lidar {list(self.camera2lidar.shape)}"
            )
        for n, K in enumerate(self.intrinsics.double()):
            fx, fy = K[0, 0].item(), K[1, 1].item()
            if not (fx > 0 and fy > 0 and torch.isfinite(K).all()) or abs(torch.linalg.det(K).item()) < 1e-9:
                raise RigError(f"cameras[{n}].intrinsics: K is not invertible (fx = {fx:g}, fy = {fy:g}; both > 0)")
        for n, pose in enumerate(self.camera2lidar):
            _check_rigid(pose, f"cameras[{n}].camera2lidar")
        _check_rigid(self.lidar2ego, "lidar2ego")
        if not 0 < self.resize <= MAX_RESIZE:
            raise RigError(f"test_image_aug.resize: must be > 0 and at most {MAX_RESIZE:g}, got {self.resize}")
        try:
            config = self.config
        except ConfigError as exc:
            raise RigError(f"{_CONFIG_FIELDS.get(exc.field, 'model.' + exc.field)}: {exc.reason}") from None
        (iH, iW), (x, y) = config.image_size, self.crop
        for name, (rH, rW) in zip(self.camera_names, self.raw_sizes, strict=True):
            sH, sW = round(rH * self.resize), round(rW * self.resize)
            if x < 0 or y < 0 or x + iW > sW or y + iH > sH:
                raise RigError(
                    f"test_image_aug.crop: columns {x:g}…{x + iW:g}, rows {y:g}…{y + iH:g} leave {name}'s "
                    f"{rW}×{rH} image resized ×{self.resize:g} ({sW}×{sH})"
                )

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    @property
    def headings_deg(self) -> Tensor:
        """``[N]``: each camera's optical axis in the lidar xy-plane, degrees counter-clockwise from lidar +y."""
        axis = self.camera2lidar[:, :3, 2].double()
        return torch.rad2deg(torch.atan2(-axis[:, 0], axis[:, 1]))

    @property
    def config(self) -> CameraConfig:
        """The model configuration this rig implies (feature map = input / 8)."""
        return CameraConfig(
            image_size=self.image_size,
            num_cameras=self.num_cameras,
            xbound=self.xbound,
            ybound=self.ybound,
            zbound=self.zbound,
            dbound=self.dbound,
        )

    @property
    def img_aug(self) -> Tensor:
        """``[4, 4]`` float32: raw pixels → network pixels, ``diag(resize, resize)`` then ``-crop``."""
        aug = torch.eye(4)
        aug[0, 0] = aug[1, 1] = self.resize
        aug[0, 3], aug[1, 3] = -self.crop[0], -self.crop[1]
        return aug

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


def rig_table(rig: Rig) -> Table:
    """One row per camera: raw size, intrinsics, position in the lidar frame, heading; the title says the rest."""
    rows = []
    for n, name in enumerate(rig.camera_names):
        K, position = rig.intrinsics[n].tolist(), rig.camera2lidar[n, :3, 3]
        raw = f"{rig.raw_sizes[n][1]}×{rig.raw_sizes[n][0]}"
        heading = round(rig.headings_deg[n].item(), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
        rows.append((name, raw, K[0][0], K[1][1], K[0][2], K[1][2], [round(v, 2) for v in position.tolist()], heading))
    (iH, iW), (x, y) = rig.image_size, rig.crop
    title = (
        f"{rig.name}: {rig.num_cameras} cameras; raw → resize {rig.resize:g} → crop at ({x:g}, {y:g}) → "
        f"{iW}×{iH} network input"
    )
    columns = ("camera", "raw W×H", "fx", "fy", "cx", "cy", "position (m, lidar)", "heading (°)")
    return Table(rows, columns, title)


def _check_rigid(pose: Tensor, field: str) -> None:
    R = pose[:3, :3].double()
    off = (R.T @ R - torch.eye(3, dtype=R.dtype)).abs().max().item()
    det = torch.linalg.det(R).item()
    if not torch.isfinite(pose).all() or off > _RIGID_TOLERANCE or abs(det - 1) > _RIGID_TOLERANCE:
        raise RigError(f"{field}: the pose is not rigid (max |RᵀR − I| = {off:.3g}, det R = {det:.4g})")


# --- reading a rig file ---------------------------------------------------------------------------------------------


def as_rig(rig: Rig | str | Path | None = None) -> Rig:
    """A ``Rig`` as given, the rig file at a path, or (None) the default nuScenes-like rig."""
    if rig is None:
        return default_rig()
    return rig if isinstance(rig, Rig) else load_rig(rig)


@cache
def default_rig() -> Rig:
    """``data/nuscenes_rig.json``, read once."""
    return load_rig(RIG_PATH)


def load_rig(path: str | Path = RIG_PATH) -> Rig:
    """Read and check a rig file (read afresh on every call, so an edited file is seen). Raises ``RigError`` with
    one line ``<file>: <field>: <reason>``."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RIG_FILE_BYTES:
            raise RigError(f"{path}: not a readable rig file (over {MAX_RIG_FILE_BYTES:,} bytes)")
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RigError(f"{path}: not a readable rig file ({type(exc).__name__}: {exc})") from None
    try:
        return _rig_from_spec(spec, path.stem)
    except RigError as exc:
        raise RigError(f"{path.name}: {exc}") from None


def _rig_from_spec(spec: object, name: str) -> Rig:
    cameras = _get(spec, "cameras", "", list)
    default_raw = spec.get("raw_image_size") if isinstance(spec, dict) else None
    aug = _get(spec, "test_image_aug", "", dict)
    model = spec.get("model", {}) if isinstance(spec, dict) else {}
    raw_sizes, intrinsics, poses = [], [], []
    for n, cam in enumerate(cameras):
        where = f"cameras[{n}]"
        raw = cam.get("raw_image_size", default_raw) if isinstance(cam, dict) else None
        if raw is None:
            raise RigError(f"{where}.raw_image_size: missing (give it per camera or at the top level)")
        raw_sizes.append(_size(raw, f"{where}.raw_image_size"))
        k = _get(cam, "intrinsics", where, dict)
        fx, fy, cx, cy = (_number(k, key, f"{where}.intrinsics") for key in ("fx", "fy", "cx", "cy"))
        intrinsics.append([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        poses.append(_pose(_get(cam, "camera2lidar", where, dict), f"{where}.camera2lidar"))
    crop = _get(aug, "crop", "test_image_aug", dict)
    return Rig(
        name=name,
        camera_names=tuple(_get(cam, "name", f"cameras[{n}]", str) for n, cam in enumerate(cameras)),
        raw_sizes=tuple(raw_sizes),
        intrinsics=torch.tensor(intrinsics).view(-1, 3, 3),
        camera2lidar=torch.stack(poses).float() if poses else torch.zeros(0, 4, 4),
        lidar2ego=_pose(_get(spec, "lidar2ego", "", dict), "lidar2ego").float(),
        resize=_number(aug, "resize", "test_image_aug"),
        crop=(_number(crop, "x", "test_image_aug.crop"), _number(crop, "y", "test_image_aug.crop")),
        image_size=_size(_get(aug, "final_size", "test_image_aug", dict), "test_image_aug.final_size"),
        **{key: _bound(model, key) for key in MODEL_KEYS},
    )


_JSON_KINDS = {list: "list", dict: "object", str: "string"}


def _get(node: object, key: str, where: str, kind: type | None = None) -> object:
    field = f"{where}.{key}" if where else key
    if not isinstance(node, dict) or key not in node:
        raise RigError(f"{field}: missing")
    value = node[key]
    if kind is not None and not isinstance(value, kind):
        raise RigError(f"{field}: must be a JSON {_JSON_KINDS[kind]}, got {value!r:.60}")
    return value


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a JSON number (not a boolean) and finite as a float, else None."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)  # an integer beyond 1.8e308 raises OverflowError
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _number(node: object, key: str, where: str) -> float:
    value = _get(node, key, where)
    number = _finite(value)
    if number is None:
        raise RigError(f"{where}.{key}: must be a finite number, got {value!r:.60}")
    return number


def _size(node: object, where: str) -> tuple[int, int]:
    h, w = (_number(node, key, where) for key in ("height", "width"))
    if h != int(h) or w != int(w) or not (0 < h <= MAX_RAW_SIDE and 0 < w <= MAX_RAW_SIDE):
        raise RigError(
            f"{where}: height and width must be whole pixels from 1 to {MAX_RAW_SIDE:,}, got {h:.6g}×{w:.6g}"
        )
    return int(h), int(w)


def _numbers(node: object, key: str, where: str, shape: tuple[int, ...]) -> Tensor:
    """``[*shape]`` float64 from nested JSON lists of finite numbers (booleans are not numbers)."""
    value = _get(node, key, where, list)
    rows = value if len(shape) == 2 else [value]
    flat = [_finite(v) for row in rows for v in (row if isinstance(row, list) else [None])]
    if None in flat or len(flat) != math.prod(shape) or any(len(row) != shape[-1] for row in rows):
        raise RigError(f"{where}.{key}: must be {'×'.join(map(str, shape))} finite numbers, got {value!r:.80}")
    return torch.tensor(flat, dtype=torch.float64).view(shape)


def _pose(node: dict, where: str) -> Tensor:
    """``[4, 4]`` float64 from ``translation_m`` and either ``rotation`` (3×3, rows) or ``heading_deg`` (+
    ``pitch_deg``, positive looking down): ``Rz(heading) @ [[1, 0, 0], [0, 0, 1], [0, -1, 0]] @ Rx(pitch)``."""
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 3] = _numbers(node, "translation_m", where, (3,))
    if "rotation" in node:
        pose[:3, :3] = _numbers(node, "rotation", where, (3, 3))
    else:
        heading = math.radians(_number(node, "heading_deg", where))
        pitch = math.radians(_number(node, "pitch_deg", where)) if "pitch_deg" in node else 0.0
        c, s = math.cos(heading), math.sin(heading)
        rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        c, s = math.cos(pitch), math.sin(pitch)
        down = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]], dtype=torch.float64)
        pose[:3, :3] = rz @ _FORWARD_CAMERA @ down
    return pose


MODEL_KEYS = ("xbound", "ybound", "zbound", "dbound")


def _bound(model: object, key: str) -> Bound:
    """``model.<key>``, R50's value when absent. An unknown key in ``model`` is an error, not a silent default."""
    if not isinstance(model, dict):
        raise RigError(f"model: must be a JSON object, got {model!r:.60}")
    unknown = sorted(set(model) - {*MODEL_KEYS, "source"})
    if unknown:
        raise RigError(f"model.{unknown[0]}: unknown key; the model section holds {', '.join(MODEL_KEYS)}")
    if key not in model:
        return getattr(R50, key)
    lo, hi, step = _numbers(model, key, "model", (3,)).tolist()
    return (lo, hi, step)
