"""BEVFusion-R50's camera branch in plain PyTorch, with the upstream parameter names."""

from .camera import CameraBranch, build_camera_model, init_default_weights
from .checkpoint import CameraCheckpoint, CheckpointError, load_camera_state, read_checkpoint, state_digest
from .fold import fold_batchnorm

__all__ = [
    "CameraBranch",
    "CameraCheckpoint",
    "CheckpointError",
    "build_camera_model",
    "fold_batchnorm",
    "init_default_weights",
    "load_camera_state",
    "read_checkpoint",
    "state_digest",
]
