"""bevnb: how CUDA-BEVFusion splits BEVFusion-R50's camera branch for deployment, step by step.

One entry point per step of the tutorial:

* ``build_camera_model`` — the camera branch (``encoders.camera``): seeded default weights or a checkpoint;
* ``make_sample`` — the export sample (``"zeros"``) or a synthetic six-camera scene (``"synthetic"``);
* ``SubclassCameraModule`` — the split point: ``(img, depth) → (camera_feature, camera_depth_weights)``;
* ``export_camera`` — ``camera.backbone.onnx`` and ``camera.vtransform.onnx``, fp16 or int8;
* ``plan_bev_pool`` / ``bev_pool`` — the calibration-time plan and the pooling kernels.
"""

from . import graphs, quant
from .bevpool import bev_pool
from .config import R50, CameraConfig
from .data import check_calibration, load_example_data, make_sample, read_tensor, write_tensor
from .export import export_camera
from .geometry import BevPoolPlan, plan_bev_pool
from .model import CameraBranch, CheckpointError, build_camera_model, read_checkpoint
from .subclass import SubclassCameraModule

__version__ = "0.1.0"

__all__ = [
    "R50",
    "BevPoolPlan",
    "CameraBranch",
    "CameraConfig",
    "CheckpointError",
    "SubclassCameraModule",
    "bev_pool",
    "build_camera_model",
    "check_calibration",
    "export_camera",
    "graphs",
    "load_example_data",
    "make_sample",
    "plan_bev_pool",
    "quant",
    "read_checkpoint",
    "read_tensor",
    "write_tensor",
]
