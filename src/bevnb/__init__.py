"""bevnb: how CUDA-BEVFusion splits BEVFusion-R50's camera branch for deployment, step by step.

The entry points the notebooks use, one per step:

* ``build_camera_model`` — the camera branch (``encoders.camera``), default seeded weights or a checkpoint;
* ``plan_bev_pool`` / ``bev_pool`` — the calibration-time plan and the pooling kernels.
"""

from .bevpool import bev_pool
from .config import R50, CameraConfig
from .geometry import BevPoolPlan, plan_bev_pool
from .model import CameraBranch, CheckpointError, build_camera_model, read_checkpoint

__version__ = "0.1.0"

__all__ = [
    "R50",
    "BevPoolPlan",
    "CameraBranch",
    "CameraConfig",
    "CheckpointError",
    "bev_pool",
    "build_camera_model",
    "plan_bev_pool",
    "read_checkpoint",
]
