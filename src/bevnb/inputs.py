"""Your own inputs: the checkpoint, the rig and the calibration frames that every chapter and CLI command runs on.

Three environment variables choose them (a CLI command's ``--checkpoint``, ``--rig`` and ``--calibration-frames``
override them), so ``make notebooks`` with them set runs the tutorial on your own model and car:

* ``BEVNB_CHECKPOINT``: a checkpoint file (a MIT checkpoint, a camera state dict, CUDA-BEVFusion's PTQ pickle or a
  file ``training/train.py`` wrote), or ``seeded`` for the untrained seeded init (seed 0). Unset: the shipped
  trained weights, ``data/training/weights.pth`` (``paths.TRAINED_WEIGHTS``).
* ``BEVNB_RIG``: a rig file (``docs/rig_format.md``). Unset: ``data/nuscenes_rig.json``.
* ``BEVNB_CALIBRATION_FRAMES``: what int8 calibration runs on: a number ``N`` (``N`` synthetic scenes of the rig,
  seeds ``0 … N−1``, rendered by bevnb), or a folder in CUDA-BEVFusion's ``example-data`` layout (``{i}-{NAME}.jpg``,
  the matrix ``.tensor`` files, ``points.tensor``), or a folder of such folders (one frame each). Unset:
  ``DEFAULT_CALIB_SAMPLES`` synthetic scenes of the rig.

``current()`` resolves them; ``show()`` prints what a chapter runs on, in its first cell.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from .config import R50, CameraConfig
from .data import load_example_data, make_sample
from .geometry import depth_map
from .model import CameraBranch, build_camera_model
from .paths import TRAINED_WEIGHTS
from .rig import RIG_PATH, Rig, load_rig

ENV_CHECKPOINT, ENV_RIG, ENV_FRAMES = "BEVNB_CHECKPOINT", "BEVNB_RIG", "BEVNB_CALIBRATION_FRAMES"
DEFAULT_CALIB_SAMPLES = 2  # synthetic scenes; chapter 04 must run in 120 s on a 2-core CPU
DEFAULT_SEED = 0  # the seed of the seeded init
SEEDED = "seeded"  # BEVNB_CHECKPOINT=seeded (--checkpoint seeded): the untrained seeded init


def backbone_inputs(sample: dict, config: CameraConfig = R50) -> tuple[Tensor, Tensor]:
    """The backbone graph's inputs for a sample dict: ``img [1, N, 3, iH, iW]`` and the lidar depth map
    ``[1, N, 1, iH, iW]`` (``bevnb.geometry.depth_map``)."""
    return sample["img"], depth_map(sample, config)


@dataclass(frozen=True, eq=False)
class Frames:
    """Calibration frames: ``count`` synthetic scenes of ``rig`` (seeds ``first_seed …``) when ``folders`` is empty,
    else one frame per folder in CUDA-BEVFusion's ``example-data`` layout (read for ``rig``'s input size)."""

    rig: Rig
    count: int
    folders: tuple[Path, ...] = ()
    first_seed: int = 0

    @property
    def synthetic(self) -> bool:
        return not self.folders

    def __str__(self) -> str:
        if self.synthetic:
            last = self.first_seed + self.count - 1
            seeds = f"seed {last}" if self.count == 1 else f"seeds {self.first_seed}–{last}"
            return f"{self.count} synthetic scene{'s' * (self.count != 1)} of rig {self.rig.name} ({seeds}, rendered)"
        where = self.folders[0] if self.count == 1 else f"{self.folders[0].parent}/*"
        return f"{self.count} frame{'s' * (self.count != 1)} of rig {self.rig.name} from {where} (example-data layout)"

    @property
    def tag(self) -> str:
        """A file-name tag for what was calibrated on: ``n2`` (synthetic, from seed 0) or a digest of the folders."""
        if self.synthetic:
            return f"n{self.count}" + (f"-s{self.first_seed}" if self.first_seed else "")
        digest = hashlib.sha256("\n".join(str(f.resolve()) for f in self.folders).encode()).hexdigest()[:10]
        return f"frames{self.count}-{digest}"

    def samples(self) -> Iterator[dict]:
        """The frames as sample dicts, one at a time (``make_sample`` / ``load_example_data``)."""
        if self.synthetic:
            for seed in range(self.first_seed, self.first_seed + self.count):
                yield make_sample("synthetic", seed=seed, rig=self.rig)
        else:
            for folder in self.folders:
                yield load_example_data(folder, self.rig)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """``backbone_inputs`` of every frame: ``(img [1, N, 3, iH, iW], depth [1, N, 1, iH, iW])``."""
        for sample in self.samples():
            yield backbone_inputs(sample, self.rig.config)

    def __len__(self) -> int:
        return self.count


def frames_from(spec: str | int | Path | None, rig: Rig) -> Frames:
    """``Frames`` from a number of synthetic scenes, an example-data folder or a folder of them (``None``:
    ``DEFAULT_CALIB_SAMPLES`` synthetic scenes). ValueError, in one line, for anything else."""
    if spec is None or spec == "":
        return Frames(rig, DEFAULT_CALIB_SAMPLES)
    text = str(spec).strip()
    if text.isdigit():
        if int(text) < 1:
            raise ValueError(f"calibration frames: at least one synthetic scene, got {text}")
        return Frames(rig, int(text))
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ValueError(f"calibration frames: {text} is neither a number of scenes nor a folder")
    if (folder / "camera_intrinsics.tensor").is_file():
        return Frames(rig, 1, (folder,))
    frames = tuple(sorted(d for d in folder.iterdir() if (d / "camera_intrinsics.tensor").is_file()))
    if not frames:
        raise ValueError(f"calibration frames: {folder} holds no example-data folder (camera_intrinsics.tensor …)")
    return Frames(rig, len(frames), frames)


@dataclass(frozen=True, eq=False)
class Inputs:
    """What a chapter or command runs on: ``checkpoint`` (``None``: the seeded init), ``rig`` (read from
    ``rig_path``) and the calibration ``frames``."""

    checkpoint: Path | None
    rig: Rig
    rig_path: Path
    frames: Frames

    def model(self, seed: int = DEFAULT_SEED) -> CameraBranch:
        """``build_camera_model`` of the checkpoint (or the seeded init) for the rig's configuration."""
        return build_camera_model(self.checkpoint, seed=seed, config=self.rig.config)

    @property
    def trained(self) -> bool:
        """Whether the checkpoint is the shipped trained one, the chapters' default."""
        return self.checkpoint is not None and self.checkpoint.resolve() == TRAINED_WEIGHTS.resolve()

    def describe(self) -> str:
        """Three lines: the checkpoint, the rig (cameras, input, grid) and the calibration frames."""
        config = self.rig.config
        (iH, iW), (X, Y, _) = config.image_size, config.grid_size
        if self.checkpoint is None:
            weights = f"{SEEDED}: the untrained seeded init (seed {DEFAULT_SEED})"
        elif self.trained:
            weights = f"{self.checkpoint} (the shipped trained weights)"
        else:
            weights = str(self.checkpoint)
        return "\n".join(
            (
                f"checkpoint:         {weights}",
                f"rig:                {self.rig.name} ({self.rig_path}): {self.rig.num_cameras} cameras, input "
                f"{iH}×{iW}, BEV grid {X}×{Y}",
                f"calibration frames: {self.frames}",
            )
        )


def current(
    checkpoint: str | Path | None = None, rig: str | Path | None = None, frames: str | int | Path | None = None
) -> Inputs:
    """The inputs to run on: each argument given wins, else its environment variable (``BEVNB_CHECKPOINT``,
    ``BEVNB_RIG``, ``BEVNB_CALIBRATION_FRAMES``), else the default (the shipped trained weights, the nuScenes-like
    rig, ``DEFAULT_CALIB_SAMPLES`` scenes). ValueError / FileNotFoundError in one line for a checkpoint that is not
    a file, a bad rig (``RigError``) or frames that are neither a count nor a folder."""
    chosen = str(checkpoint or os.environ.get(ENV_CHECKPOINT) or TRAINED_WEIGHTS)
    checkpoint = None if chosen == SEEDED else Path(chosen).expanduser()
    if checkpoint is not None and not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    rig_path = Path(rig or os.environ.get(ENV_RIG) or RIG_PATH).expanduser()
    loaded = load_rig(rig_path)
    spec = frames if frames is not None else os.environ.get(ENV_FRAMES)
    return Inputs(checkpoint, loaded, rig_path, frames_from(spec, loaded))


def show(**overrides: str | Path | None) -> Inputs:
    """``current(**overrides)``, printed: every chapter's first cell says what it runs on."""
    inputs = current(**overrides)
    print(inputs.describe())
    if not inputs.trained or inputs.rig_path.resolve() != RIG_PATH.resolve():
        print("(the prose describes the default model and rig; the outputs below are those of the inputs above)")
    return inputs


def frames_for(config: CameraConfig, count: int) -> Frames:
    """``count`` synthetic scenes of the rig a model of ``config`` is for: ``current()``'s (``BEVNB_RIG``) or the
    default rig, whichever has that configuration. ValueError when neither has it: calibrating on another rig's
    cameras would be silently wrong, so pass ``Frames`` of the model's rig."""
    for rig in (current().rig, load_rig(RIG_PATH)):
        if rig.config == config:
            return Frames(rig, count)
    raise ValueError(f"no rig at hand has the model's configuration {config}: calibrate on Frames of its rig")


def config_tag(config: CameraConfig) -> str:
    """``""`` for R50, else ``-<N>cam-<iH>x<iW>-<X>x<Y>``: what tells files made for another configuration apart
    (``build/onnx/fp16-5cam-384x1056-256x128``, calibration files)."""
    (iH, iW), (X, Y) = config.image_size, config.bev_size
    return "" if config == R50 else f"-{config.num_cameras}cam-{iH}x{iW}-{X}x{Y}"
