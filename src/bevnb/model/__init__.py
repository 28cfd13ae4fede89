"""BEVFusion-R50's camera branch in plain PyTorch, with the upstream parameter names, and the detection head after
it (MIT BEVFusion's camera-only decoder + CenterHead) with its box targets and decoding."""

from .box_coder import BoxCoder, TaskTargets, centerhead_loss, decode, encode_targets
from .camera import CameraBranch, build_camera_model, init_default_weights
from .checkpoint import CameraCheckpoint, CheckpointError, load_camera_state, read_checkpoint, state_digest
from .detector import Detector, build_detector
from .fold import fold_batchnorm
from .head import MIT_WIDTHS, SMALL_WIDTHS, DetectionHead, HeadConfig, build_head, select_tasks

__all__ = [
    "MIT_WIDTHS",
    "SMALL_WIDTHS",
    "BoxCoder",
    "CameraBranch",
    "CameraCheckpoint",
    "CheckpointError",
    "DetectionHead",
    "Detector",
    "HeadConfig",
    "TaskTargets",
    "build_camera_model",
    "build_detector",
    "build_head",
    "centerhead_loss",
    "decode",
    "encode_targets",
    "fold_batchnorm",
    "init_default_weights",
    "load_camera_state",
    "read_checkpoint",
    "select_tasks",
    "state_digest",
]
