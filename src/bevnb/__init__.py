"""bevnb: how CUDA-BEVFusion splits BEVFusion-R50's camera branch for deployment, step by step.

One entry point per step of the tutorial:

* ``build_camera_model`` — the camera branch (``encoders.camera``): seeded default weights or a checkpoint;
* ``load_rig`` — a rig file: cameras, calibration, image aug and BEV grid (``Rig.config`` is the model's config);
* ``make_sample`` — the export sample (``"zeros"``) or a synthetic scene (``"synthetic"``) for any rig;
* ``SubclassCameraModule`` — the split point: ``(img, depth) → (camera_feature, camera_depth_weights)``;
* ``export_camera`` — ``camera.backbone.onnx`` and ``camera.vtransform.onnx``, fp16 or int8;
* ``plan_bev_pool`` / ``bev_pool`` — the calibration-time plan and the pooling kernels.

The other steps live in their modules (``bevnb.quant``, ``bevnb.graphs``, ``bevnb.pipeline``, ``bevnb.validation``
…), which load on first use: ``import bevnb`` stays light and imports neither pytorch-quantization, nor ModelOpt,
nor ONNX Runtime, nor matplotlib.

Layering: modules import downward only, in this order (a test reads the imports and fails on any circle)::

    config, tables, metrics, paths
    → rig             a deployment rig file → CameraConfig + calibration matrices
    → geometry        frustum, lift geometry, the depth map, the bev_pool plan
    → bevpool/        reference, Triton kernels, dispatch, backend comparison
    → model/          ResNet50, GeneralizedLSSFPN, DepthLSSTransform, CameraBranch, checkpoints;
                      head (decoder + CenterHead), box_coder (targets, decoding), detector (branch + head,
                      its weights file)
    → scene, data, oracle
    → inputs          your checkpoint, rig and calibration frames (BEVNB_CHECKPOINT, BEVNB_RIG …)
    → detection       the nuScenes detection metric (AP by centre distance, ATE, ASE, AOE)
    → evaluation      a detector on held-out scenes: the nuScenes table and depth within one bin
    → subclass        SubclassCameraModule and the split's interface (file and I/O names)
    → graphs → drawing, netron_view
    → quant           pytorch-quantization: the recipe, calibration, amax I/O, the placement
    → quant_modelopt  the same recipe with TensorRT Model Optimizer
    → sensitivity     where int8 hurts
    → export → pipeline → validation
    → toolchains      ModelOpt beside pytorch-quantization, onnxsim beside onnxslim
    → viz → viz_detection (the detector's figures), environment, chapters → cli
"""

import importlib
from types import ModuleType

from .bevpool import bev_pool
from .config import R50, CameraConfig
from .data import check_calibration, load_example_data, make_sample, read_tensor, write_tensor
from .export import export_camera
from .geometry import BevPoolPlan, plan_bev_pool
from .model import CameraBranch, CheckpointError, build_camera_model, read_checkpoint
from .rig import Rig, RigError, load_rig
from .subclass import SubclassCameraModule

__version__ = "0.1.0"

__all__ = [
    "R50",
    "BevPoolPlan",
    "CameraBranch",
    "CameraConfig",
    "CheckpointError",
    "Rig",
    "RigError",
    "SubclassCameraModule",
    "bev_pool",
    "build_camera_model",
    "check_calibration",
    "export_camera",
    "load_example_data",
    "load_rig",
    "make_sample",
    "plan_bev_pool",
    "read_checkpoint",
    "read_tensor",
    "write_tensor",
]


def __getattr__(name: str) -> ModuleType:
    """``bevnb.quant``, ``bevnb.graphs`` … without importing them first: a submodule loads on first access."""
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
