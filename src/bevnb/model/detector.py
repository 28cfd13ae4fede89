"""The camera branch and the detection head as one model, and the weights ``training/train.py`` ships for it.

``Detector(camera, head)`` registers its parts under MIT BEVFusion's names, so ``state_dict()`` keys are a MIT
checkpoint's: ``encoders.camera.{backbone,neck,vtransform}.*``, ``decoder.*``, ``heads.object.*``.

``build_detector(checkpoint)`` reads two layouts of one ``{"state_dict": {...}, "meta": {...}}`` file:

* the trainer's: ``encoders.camera.vtransform.*`` (without the derived buffers ``dx``, ``bx``, ``nx``,
  ``frustum``), ``decoder.*``, ``heads.object.*``, and ``meta["backbone_seed"]``: the frozen backbone and neck were
  never changed by training, so ``build_camera_model`` regenerates them from that seed instead of their being
  stored;
* a full MIT-layout file that also holds ``encoders.camera.backbone.*`` and ``….neck.*``: those load instead.

Keys under other prefixes (``encoders.lidar.*``, ``fuser.*`` … of a fusion checkpoint) are ignored; everything
under the three prefixes loads strictly. The derived vtransform buffers come from ``config``, so a file trained on
the nuScenes-like rig also runs on another rig (``data/five_camera_rig.json``). The file is read with
``torch.load(..., weights_only=True)``: it may come from anywhere, and anything but tensors, plain containers and
numbers in it is an error, never code that runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import R50, CameraConfig
from .box_coder import BoxCoder, decode
from .camera import CameraBranch, build_camera_model
from .checkpoint import (
    CAMERA_PREFIX,
    CameraCheckpoint,
    CheckpointError,
    backbone_seed,
    load_camera_state,
    unreadable_checkpoint,
)
from .head import SMALL_WIDTHS, DetectionHead, HeadConfig, build_head

DETECTOR_PREFIXES = (CAMERA_PREFIX, "decoder.", "heads.object.")
"""The keys a detector file's ``state_dict`` contributes; other keys (a fusion model's lidar branch …) are ignored."""


class Detector(nn.Module):
    """The camera branch ``[1, N, 3, iH, iW]`` images → BEV ``[1, 80, X/2, Y/2]`` → the head's maps → boxes.

    * ``forward(sample)`` → one dict of maps per task, as ``DetectionHead`` returns them (``heatmap [1, n, X', Y']``
      logits, ``reg``, ``height``, ``dim``, ``rot``, ``vel``);
    * ``decode(maps)`` → ``{"boxes": [K, 9], "scores": [K], "labels": [K]}`` (``box_coder.decode`` with
      ``coder``: lidar frame, mmdet3d's layout, labels index ``config.CLASS_NAMES``, highest score first);
    * ``detect(sample)`` = ``decode(forward(sample))``.

    ``camera`` and ``head`` are the modules it was built from (their parameters, not copies).
    """

    def __init__(self, camera: CameraBranch, head: DetectionHead) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"camera": camera})
        self.decoder, self.heads = head.decoder, head.heads
        self._head = (head,)  # a tuple: not registered a second time under "head."
        self.coder = BoxCoder.for_config(camera.config, head.config)

    @property
    def camera(self) -> CameraBranch:
        """The camera branch (``encoders.camera``)."""
        return self.encoders["camera"]

    @property
    def head(self) -> DetectionHead:
        """The detection head (``decoder`` + ``heads``)."""
        return self._head[0]

    @property
    def config(self) -> CameraConfig:
        """The camera branch's configuration (rig)."""
        return self.camera.config

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes the head detects, one task each (nuScenes names)."""
        return self.head.config.class_names

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        self.head.train(mode)
        return self

    def forward(self, sample: dict) -> list[dict[str, Tensor]]:
        return self.head(self.camera(sample))

    def decode(self, maps: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The head's maps of one sample (batch 1) → ``boxes [K, 9]``, ``scores [K]``, ``labels [K]``."""
        return decode(maps, self.coder)[0]

    @torch.no_grad()
    def detect(self, sample: dict) -> dict[str, Tensor]:
        """Boxes of one sample dict: ``boxes [K, 9]`` (``[x, y, z, dx, dy, dz, yaw, vx, vy]``), ``scores [K]``,
        ``labels [K]``."""
        return self.decode(self(sample))


def build_detector(
    checkpoint: str | Path | None = None,
    seed: int = 0,
    config: CameraConfig = R50,
    head_config: HeadConfig = SMALL_WIDTHS,
) -> Detector:
    """The detector in eval mode.

    * ``checkpoint=None``: the seeded camera branch (``build_camera_model(seed=seed)``) and the seeded head
      (``build_head(head_config, seed=seed)``): an untrained model, for tests;
    * a path: a file in the trainer's or MIT's layout (see the module docstring); ``seed`` is unused, the backbone
      seed is the file's. Any problem (unreadable or hostile file, missing ``meta["backbone_seed"]``, missing,
      unexpected or mis-shaped keys) is one ``CheckpointError`` line starting with the path, and nothing loads.
    """
    if checkpoint is None:
        camera = build_camera_model(seed=seed, config=config)
        return Detector(camera, build_head(head_config, seed=seed, bev_size=config.out_bev_size)).eval()
    path = Path(checkpoint)
    state, seed = _read_detector_file(path)
    camera_state = {k.removeprefix(CAMERA_PREFIX): v for k, v in state.items() if k.startswith(CAMERA_PREFIX)}
    kind = "mit" if seed is None else "trained"
    try:
        camera = build_camera_model(CameraCheckpoint(kind, camera_state, backbone_seed=seed), config=config)
        detector = Detector(camera, DetectionHead(head_config))
        loaded = {k for k in detector.state_dict() if k.startswith(CAMERA_PREFIX)}
        load_camera_state(detector, {k: v for k, v in state.items() if k not in camera_state}, loaded)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {str(exc).replace('the camera branch', 'the detector')}") from None
    return detector.eval()


def _read_detector_file(path: Path) -> tuple[dict[str, Tensor], int | None]:
    """``(state_dict under DETECTOR_PREFIXES, meta["backbone_seed"] or None)`` of a ``{"state_dict", "meta"}``
    file, or one ``CheckpointError`` line."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # hostile pickle, truncated zip, text: torch raises many types; all mean "bad file"
        raise unreadable_checkpoint(path, exc) from None
    if not (isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a {{'state_dict': …}} detector checkpoint")
    state = {k: v for k, v in obj["state_dict"].items() if isinstance(k, str) and k.startswith(DETECTOR_PREFIXES)}
    wrong = next((k for k, v in state.items() if not isinstance(v, Tensor)), None)
    if wrong is not None:
        raise CheckpointError(f"{path}: {wrong} holds a {type(state[wrong]).__name__}, not a tensor")
    return state, backbone_seed(path, obj.get("meta"))
