"""Sample dicts with the keys and shapes of CUDA-BEVFusion's ``example-data.pth``, and its ``.tensor`` files.

* ``make_sample("zeros", rig=…)``: the export sample (zero image, no lidar points, so the depth input is all zeros);
* ``make_sample("synthetic", seed, rig=…)``: the scene of ``bevnb.scene`` rendered by any rig, with ground truth;
* ``load_example_data(dir)``: upstream's ``example-data`` folder (JPEGs + ``.tensor`` files) as the same dict, and
  ``example_data_rig(dir)``: the rig those files describe (camera count, names and raw sizes read from the files);
* ``read_tensor`` / ``write_tensor``: CUDA-BEVFusion's ``.tensor`` format;
* ``check_calibration``: the one place that rejects a malformed sample, with a one-line ValueError.

``rig`` is a ``bevnb.rig.Rig``, a rig file's path, or None for the default nuScenes-like rig.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import R50, CameraConfig
from .rig import Rig, as_rig
from .scene import lidar_sweep, random_scene, render_cameras
from .tables import Table, format_value

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

KINDS = ("zeros", "synthetic")

# key → what it holds (shapes: see make_sample)
SAMPLE_KEYS: dict[str, str] = {
    "img": "camera images after the test-time aug, ImageNet-normalised RGB",
    "points": "lidar points in the lidar frame: x, y, z (m), intensity (0–255), time lag (s)",
    "camera2ego": "camera frame → ego (car) frame",
    "lidar2ego": "lidar frame → ego frame",
    "lidar2camera": "lidar frame → camera frame (x right, y down, z forward)",
    "lidar2image": "lidar frame → raw-image pixels × depth: camera_intrinsics @ lidar2camera",
    "camera_intrinsics": "K in raw-image pixels (1600×900 for the default rig), in the top-left 3×3",
    "camera2lidar": "camera frame → lidar frame: the extrinsics of the lift",
    "img_aug_matrix": "raw pixels → network pixels: resize, then crop (0.48 and (32, 176) for the default rig)",
    "lidar_aug_matrix": "lidar-frame augmentation; identity at test time",
}
SYNTHETIC_KEYS: dict[str, str] = {
    "gt_boxes": "boxes in the lidar frame: x, y, z (bottom centre), dx, dy, dz (m), yaw (rad)",
    "gt_labels": "nuScenes class index of each box (bevnb.scene.CLASS_NAMES)",
    "instance_map": "index of the box each pixel sees, -1 for none",
    "camera_depth": "rendered camera-frame depth of the surface each pixel sees (m, inf for sky)",
}

_CAMERA_MATRICES = ("camera2ego", "lidar2camera", "lidar2image", "camera_intrinsics", "camera2lidar", "img_aug_matrix")
_SAMPLE_MATRICES = ("lidar2ego", "lidar_aug_matrix")


def make_sample(kind: str = "zeros", seed: int = 0, rig: Rig | str | Path | None = None) -> dict:
    """A batch-1 sample dict with every key of ``SAMPLE_KEYS`` (and ``SYNTHETIC_KEYS`` for ``"synthetic"``):

    ``img [1, N, 3, iH, iW]`` float32; ``points``: a list with one ``[P, 5]`` float32; ``camera2ego``,
    ``lidar2camera``, ``lidar2image``, ``camera_intrinsics``, ``camera2lidar``, ``img_aug_matrix [1, N, 4, 4]``;
    ``lidar2ego``, ``lidar_aug_matrix [1, 4, 4]``; synthetic only: ``gt_boxes`` (list of one ``[K, 7]``),
    ``gt_labels`` (list of one ``[K]`` int64), ``instance_map [1, N, iH, iW]`` int64, ``camera_depth [1, N, iH, iW]``
    (the renderer's depth of what each pixel sees).

    * ``"zeros"``: CUDA-BEVFusion's export input: the image is all zeros and there are no lidar points (``[0, 5]``),
      so ``geometry.depth_map(sample)`` is the all-zero ``[1, N, 1, iH, iW]`` that ``export-camera.py`` feeds. (Upstream
      exports with example-data's real image; the graph's shapes do not depend on the values.) ``seed`` is unused.
    * ``"synthetic"``: the scene of ``bevnb.scene.random_scene(seed)`` rendered by the rig's cameras and a 32-beam
      lidar; same seed and rig, same sample.

    Calibration and shapes come from ``rig`` (default ``data/nuscenes_rig.json``: N = 6, 256×704).
    """
    if kind not in KINDS:
        raise ValueError(f"make_sample kind must be one of {', '.join(KINDS)}, got {kind!r}")
    rig = as_rig(rig)
    sample = rig.matrices()
    N, (iH, iW) = rig.num_cameras, rig.image_size
    if kind == "zeros":
        sample["img"] = torch.zeros(1, N, 3, iH, iW)
        sample["points"] = [torch.zeros(0, 5)]
    else:
        scene = random_scene(seed, rig=rig)
        views = render_cameras(rig, scene)
        sample["img"] = normalize_image(views.rgb).unsqueeze(0)
        sample["points"] = [lidar_sweep(scene)]
        sample["gt_boxes"] = [scene.boxes.clone()]
        sample["gt_labels"] = [scene.labels.clone()]
        sample["instance_map"] = views.instance.unsqueeze(0)
        sample["camera_depth"] = views.depth.unsqueeze(0)
    check_calibration(sample, rig.config)
    return sample


def normalize_image(rgb: Tensor) -> Tensor:
    """RGB in [0, 1], ``[..., 3, H, W]`` → ImageNet-normalised (upstream ``ImageNormalize``)."""
    mean, std = _mean_std(rgb.dtype)
    return (rgb - mean) / std


def denormalize_image(img: Tensor) -> Tensor:
    """Inverse of ``normalize_image``, clamped to [0, 1]: what to show."""
    mean, std = _mean_std(img.dtype)
    return (img * std + mean).clamp(0.0, 1.0)


def _mean_std(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return (
        torch.tensor(IMAGENET_MEAN, dtype=dtype).view(3, 1, 1),
        torch.tensor(IMAGENET_STD, dtype=dtype).view(3, 1, 1),
    )


def check_calibration(sample: dict, config: CameraConfig = R50) -> None:
    """Raise a one-line ValueError unless ``sample`` is well formed for ``config``: every key of ``SAMPLE_KEYS`` with
    its shape (as many cameras as the configuration), finite float matrices, invertible intrinsics with positive
    focal lengths, invertible image/lidar augs, rigid ``camera2lidar``, and ``lidar2camera``/``lidar2image``
    consistent with them."""
    missing = [k for k in SAMPLE_KEYS if k not in sample]
    if missing:
        raise ValueError(f"sample lacks {', '.join(missing)}; a sample has {', '.join(SAMPLE_KEYS)}")
    iH, iW = config.image_size
    img = sample["img"]
    if isinstance(img, Tensor) and img.dim() == 5 and img.shape[1] != config.num_cameras:
        raise ValueError(f"img has {img.shape[1]} cameras, the configuration (rig) has {config.num_cameras}")
    if not isinstance(img, Tensor) or img.dim() != 5 or tuple(img.shape[2:]) != (3, iH, iW):
        raise ValueError(f"img must be [B, N, 3, {iH}, {iW}], got {_shape(img)}")
    B, N = img.shape[:2]
    for key in _CAMERA_MATRICES + _SAMPLE_MATRICES:
        want = (B, N, 4, 4) if key in _CAMERA_MATRICES else (B, 4, 4)
        value = sample[key]
        if not isinstance(value, Tensor) or tuple(value.shape) != want:
            raise ValueError(f"{key} must be {list(want)} (img has B={B}, N={N}), got {_shape(value)}")
        if not value.is_floating_point():
            raise ValueError(f"{key} must be a float tensor, got {value.dtype}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{key} contains NaN or inf")
    points = sample["points"]
    if not isinstance(points, list | tuple) or len(points) != B:
        raise ValueError(f"points must be a list of {B} tensors [P, 5], got {_shape(points)}")
    for b, p in enumerate(points):
        if not isinstance(p, Tensor) or p.dim() != 2 or p.shape[1] != 5:
            raise ValueError(f"points[{b}] must be [P, 5] (x, y, z, intensity, time), got {_shape(p)}")
        if not torch.isfinite(p).all():
            raise ValueError(f"points[{b}] contains NaN or inf")

    m = {k: sample[k].detach().double().cpu() for k in _CAMERA_MATRICES + _SAMPLE_MATRICES}
    K = m["camera_intrinsics"][..., :3, :3]
    bad = (K[..., 0, 0] <= 0) | (K[..., 1, 1] <= 0) | (torch.linalg.det(K).abs() < 1e-6)
    if bad.any():
        b, n = torch.nonzero(bad)[0].tolist()
        raise ValueError(
            f"camera_intrinsics[{b}, {n}] is singular or has a non-positive focal length: {K[b, n].tolist()}"
        )
    for key in ("img_aug_matrix", "lidar_aug_matrix"):
        det = torch.linalg.det(m[key][..., :3, :3])
        if (det.abs() < 1e-9).any():
            raise ValueError(f"{key} has a singular 3×3 part (det {det.flatten()[det.abs().argmin()].item():.3g})")
    R = m["camera2lidar"][..., :3, :3]
    if (R.transpose(-1, -2) @ R - torch.eye(3, dtype=R.dtype)).abs().amax() > 1e-3:
        raise ValueError("camera2lidar rotations must be orthonormal (camera2lidar[..., :3, :3] is not a rotation)")
    eye = torch.eye(4, dtype=torch.float64)
    if (m["lidar2camera"] @ m["camera2lidar"] - eye).abs().amax() > 1e-3:
        raise ValueError("lidar2camera is not the inverse of camera2lidar")
    expected = m["camera_intrinsics"] @ m["lidar2camera"]
    if ((m["lidar2image"] - expected).abs().amax() / expected.abs().amax()) > 1e-4:
        raise ValueError("lidar2image is not camera_intrinsics @ lidar2camera")


def _shape(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{list(value.shape)} {value.dtype}"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def sample_table(sample: dict) -> Table:
    """One row per documented key of ``sample``: shape (a list shows each tensor's), dtype, meaning."""
    rows = []
    for key, meaning in {**SAMPLE_KEYS, **SYNTHETIC_KEYS}.items():
        value = sample.get(key)
        if value is None:
            continue
        if isinstance(value, list | tuple):
            shape = "list of " + ", ".join(format_value(list(v.shape)) for v in value)
            dtype = str(value[0].dtype).removeprefix("torch.") if value else "-"
        else:
            shape, dtype = list(value.shape), str(value.dtype).removeprefix("torch.")
        rows.append((key, shape, dtype, meaning))
    return Table(rows, ("key", "shape", "dtype", "meaning"), "sample dict (batch 1)")


# ---------------------------------------------------------------------------------------------------------------
# CUDA-BEVFusion's .tensor files (src/common/tensor.cu): int32 little-endian header [magic, ndim, dtype code],
# ndim int32 dims, then the raw C-contiguous data.

TENSOR_MAGIC = 0x33FF1101
TENSOR_MAX_DIMS = 16
_TENSOR_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<i4"),
    2: np.dtype("<f2"),
    3: np.dtype("<f4"),
    4: np.dtype("<i8"),
    5: np.dtype("<u8"),
    6: np.dtype("<u4"),
    7: np.dtype("i1"),
    8: np.dtype("u1"),
    9: np.dtype("<u2"),
    10: np.dtype("<i2"),
}
_TENSOR_CODES = {dt: code for code, dt in _TENSOR_DTYPES.items()}


def write_tensor(path: str | Path, tensor: Tensor) -> Path:
    """Write ``tensor`` as a CUDA-BEVFusion ``.tensor`` file; dtypes: int8/16/32/64, uint8/16/32/64, fp16, fp32."""
    array = tensor.detach().cpu().contiguous().numpy()
    dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    code = _TENSOR_CODES.get(dtype)
    if code is None:
        raise ValueError(f"the .tensor format stores {_tensor_dtype_names()}, got {tensor.dtype}")
    if array.ndim > TENSOR_MAX_DIMS:
        raise ValueError(f"the .tensor format stores at most {TENSOR_MAX_DIMS} dims, got {array.ndim}")
    path = Path(path)
    header = np.array([TENSOR_MAGIC, array.ndim, code, *array.shape], dtype="<i4")
    path.write_bytes(header.tobytes() + array.astype(dtype, copy=False).tobytes())
    return path


def read_tensor(path: str | Path) -> Tensor:
    """Read a CUDA-BEVFusion ``.tensor`` file. Raises ValueError on a wrong magic, dtype code, dims or size."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 12:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for a .tensor header (12 bytes)")
    magic, ndim, code = np.frombuffer(raw, dtype="<i4", count=3).tolist()
    if magic != TENSOR_MAGIC:
        raise ValueError(
            f"{path}: not a .tensor file (magic {magic & 0xFFFFFFFF:#010x}, expected {TENSOR_MAGIC:#010x})"
        )
    if not 0 <= ndim <= TENSOR_MAX_DIMS:
        raise ValueError(f"{path}: header says {ndim} dims, the format allows 0 to {TENSOR_MAX_DIMS}")
    if code not in _TENSOR_DTYPES:
        raise ValueError(f"{path}: unknown dtype code {code}; known codes are {sorted(_TENSOR_DTYPES)}")
    if len(raw) < 12 + 4 * ndim:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for a header with {ndim} dims")
    dims = np.frombuffer(raw, dtype="<i4", count=ndim, offset=12).tolist()
    dtype = _TENSOR_DTYPES[code]
    expected = 12 + 4 * ndim + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if any(d < 0 for d in dims) or len(raw) != expected:
        raise ValueError(
            f"{path}: header says {dims} {dtype.name} = {expected} bytes in all, the file has {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=12 + 4 * ndim).reshape(dims)
    return torch.from_numpy(data.astype(dtype.newbyteorder("="), copy=True))


def _tensor_dtype_names() -> str:
    return ", ".join(dt.name for dt in _TENSOR_DTYPES.values())


# ---------------------------------------------------------------------------------------------------------------
# Upstream's example-data folder

EXAMPLE_MATRICES = ("camera_intrinsics", "camera2lidar", "lidar2image", "img_aug_matrix")


def example_data_rig(directory: str | Path, like: Rig | str | Path | None = None) -> Rig:
    """The rig a CUDA-BEVFusion ``example-data`` folder describes; the number of cameras comes from the files.

    Per camera: the name and raw size from ``{i}-{NAME}.jpg`` (camera ``CAM_{NAME}``), K from
    ``camera_intrinsics.tensor`` and the pose from ``camera2lidar.tensor`` (``[1, N, 4, 4]``); the resize and crop
    from ``img_aug_matrix.tensor`` (one aug for every camera, as CUDA-BEVFusion assumes); ``lidar2ego.tensor`` when
    present, else the identity. The network input size and the model's grid are not in the files: they come from
    ``like`` (default: the nuScenes-like rig, 256×704 and a 360×360 grid, what upstream's example-data was made for).
    """
    directory, like = _example_dir(directory), as_rig(like)
    K = _read_matrix(directory, "camera_intrinsics")
    N = K.shape[1]
    cams = (1, N, 4, 4)
    camera2lidar, aug = _read_matrix(directory, "camera2lidar", cams), _read_matrix(directory, "img_aug_matrix", cams)
    if not torch.allclose(aug, aug[:, :1].expand_as(aug)):
        raise ValueError(f"{directory}/img_aug_matrix.tensor: cameras have different augs; a rig applies one to all")
    resize, crop_x, crop_y = _check_resize_crop(aug[0, 0])
    files = _camera_images(directory, N)
    sizes = [_open_image(file, lambda im: (im.height, im.width)) for file in files]
    return Rig(
        name=directory.name,
        camera_names=tuple("CAM_" + f.stem.split("-", 1)[1] for f in files),
        raw_sizes=tuple(sizes),
        intrinsics=K[0, :, :3, :3],
        camera2lidar=camera2lidar[0],
        lidar2ego=_read_matrix(directory, "lidar2ego", (1, 4, 4), torch.eye(4)[None])[0],
        resize=resize,
        crop=(crop_x, crop_y),
        image_size=like.image_size,
        xbound=like.xbound,
        ybound=like.ybound,
        zbound=like.zbound,
        dbound=like.dbound,
    )


def load_example_data(directory: str | Path, rig: Rig | str | Path | None = None) -> dict:
    """CUDA-BEVFusion's ``example-data`` folder → a sample dict (same keys, shapes and dtypes as ``make_sample``).

    Reads ``{i}-{NAME}.jpg`` (raw RGB images: six 1600×900 in nuScenes order upstream), ``camera_intrinsics``,
    ``camera2lidar``, ``lidar2image`` and ``img_aug_matrix.tensor`` (``[1, N, 4, 4]`` fp32) and ``points.tensor``
    (``[P, 5]`` fp16, returned as fp32). Images are resized and cropped as ``img_aug_matrix`` says, with bilinear
    interpolation like CUDA-BEVFusion's ``camera-normalization.cu`` (MIT resizes with PIL's default filter, so
    pixels differ slightly), then ImageNet-normalised. ``rig`` (default ``example_data_rig(directory)``) gives the
    network input size; its cameras must be the folder's.

    ``lidar2camera``, ``camera2ego``, ``lidar2ego`` and ``lidar_aug_matrix`` are read when their ``.tensor`` files
    are there (``tool/dump-data.py`` writes them); otherwise ``lidar2camera = inv(camera2lidar)``, the lidar aug is
    the identity, and the ego frame is taken to be the lidar frame (the camera branch uses none of these three).
    """
    directory = _example_dir(directory)
    rig = example_data_rig(directory) if rig is None else as_rig(rig)
    cams, ego = (1, rig.num_cameras, 4, 4), (1, 4, 4)
    sample = {k: _read_matrix(directory, k, cams) for k in EXAMPLE_MATRICES}
    identity = torch.eye(4)[None]
    sample["lidar2camera"] = _read_matrix(directory, "lidar2camera", cams, torch.linalg.inv(sample["camera2lidar"]))
    sample["lidar2ego"] = _read_matrix(directory, "lidar2ego", ego, identity)
    sample["lidar_aug_matrix"] = _read_matrix(directory, "lidar_aug_matrix", ego, identity)
    default_camera2ego = sample["lidar2ego"][:, None] @ sample["camera2lidar"]
    sample["camera2ego"] = _read_matrix(directory, "camera2ego", cams, default_camera2ego)
    sample["points"] = [read_tensor(_require(directory / "points.tensor")).float()]

    images = []
    for i, file in enumerate(_camera_images(directory, rig.num_cameras)):
        (h, w) = rig.raw_sizes[i]
        if _open_image(file, lambda im: (im.height, im.width)) != (h, w):
            raise ValueError(f"{file}: the image is not {w}×{h}, the size of the rig's camera {i}")
        rgb = _open_image(file, lambda im: im.convert("RGB"))
        images.append(_resize_crop(rgb, sample["img_aug_matrix"][0, i], rig.image_size))
    sample["img"] = normalize_image(torch.stack(images)).unsqueeze(0)
    check_calibration(sample, rig.config)
    return sample


def _example_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory (expected CUDA-BEVFusion's example-data folder)")
    return directory


def _camera_images(directory: Path, count: int) -> list[Path]:
    """``{i}-{NAME}.jpg`` for i = 0 … count - 1, exactly one per camera, and no camera beyond."""
    files = []
    for i in range(count):
        found = sorted(directory.glob(f"{i}-*.jpg"))
        if len(found) != 1:
            what = "none" if not found else ", ".join(f.name for f in found)
            raise ValueError(f"{directory}: camera {i} needs one image {i}-<NAME>.jpg, found {what}")
        files.append(found[0])
    extra = sorted(directory.glob(f"{count}-*.jpg"))
    if extra:
        raise ValueError(f"{directory}: {extra[0].name} is a camera beyond the {count} of the calibration files")
    return files


def _open_image(file: Path, read: Callable[[Any], Any]) -> Any:
    """``read(image)`` on ``file`` opened with PIL (``read`` may only look at the header, or decode). Anything PIL
    refuses (not an image, truncated data, more pixels than PIL's decompression-bomb limit) is one ValueError line."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                return read(im)
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError … for files it cannot read
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{file}: not a readable image ({type(exc).__name__}: {reason:.120})") from None


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{path} is missing (expected in CUDA-BEVFusion's example-data folder)")
    return path


def _read_matrix(
    directory: Path, key: str, shape: tuple[int, ...] | None = None, default: Tensor | None = None
) -> Tensor:
    """``<key>.tensor`` as float32 of ``shape`` (None: any ``[1, N, 4, 4]``); ``default`` when the file is absent
    (required when it is None)."""
    file = directory / f"{key}.tensor"
    if default is not None and not file.is_file():
        return default
    value = read_tensor(_require(file))
    cameras = value.dim() == 4 and value.shape[0] == 1 and value.shape[2:] == (4, 4)
    if not (tuple(value.shape) == shape if shape else cameras):
        want = list(shape) if shape else "[1, N, 4, 4]"
        raise ValueError(f"{directory / key}.tensor must be {want}, got {list(value.shape)}")
    return value.float()


def _resize_crop(image, img_aug: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL RGB image → ``[3, iH, iW]`` in [0, 1]: resize by ``img_aug[0, 0]``, crop at ``-img_aug[:2, 3]``."""
    from PIL import Image

    scale, crop_x, crop_y = _check_resize_crop(img_aug)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    iH, iW = size
    left, top = round(crop_x), round(crop_y)
    cropped = resized.crop((left, top, left + iW, top + iH))
    return torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _check_resize_crop(img_aug: Tensor) -> tuple[float, float, float]:
    """``(resize, crop x, crop y)`` of an ``img_aug_matrix [4, 4]``; ValueError unless it is a resize and a crop."""
    scale = img_aug[0, 0].item()
    if not torch.allclose(img_aug[:2, :2], scale * torch.eye(2)):
        raise ValueError(f"img_aug_matrix must be a resize and a crop (no rotation or flip), got {img_aug.tolist()}")
    return scale, -img_aug[0, 3].item(), -img_aug[1, 3].item()
