"""The split point: CUDA-BEVFusion's ``SubclassCameraModule`` (``qat/export-camera.py``), rebuilt.

The camera branch is cut where MIT BEVFusion would take the outer product ``depth ⊗ feat`` and pool it. What comes
before the cut becomes ``camera.backbone.onnx``; the outer product and the pooling are fused into one bev_pool kernel;
the downsample after it becomes ``camera.vtransform.onnx``.

This module also owns the split's interface, the names CUDA-BEVFusion's runtime binds (``camera-backbone.cu``,
``camera-vtransform.cu``): the two file names and each graph's ``(input names, output names)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .model import CameraBranch

BACKBONE_FILE = "camera.backbone.onnx"
VTRANSFORM_FILE = "camera.vtransform.onnx"
BACKBONE_IO = (("img", "depth"), ("camera_feature", "camera_depth_weights"))
VTRANSFORM_IO = (("feat_in",), ("feat_out",))


class SubclassCameraModule(nn.Module):
    """``forward(img [B, N, 3, iH, iW], depth [B, N, 1, iH, iW])`` →
    ``(camera_feature [B·N, fH, fW, C] NHWC, camera_depth_weights [B·N, D, fH, fW] softmax over D)``.

    For R50: ``img [1, 6, 3, 256, 704]``, ``depth [1, 6, 1, 256, 704]`` → ``[6, 32, 88, 80]`` and
    ``[6, 118, 32, 88]``. No geometry, no bev_pool, no outer product; shapes are Python ints, so every shape in the
    exported graph is a constant.

    The backbone, neck and vtransform are registered directly (not under ``model.``), so the exporter's scope names
    read ``/backbone/layer1/…``, ``/neck/…``, ``/dtransform/…``, ``/depthnet/…``: the vtransform itself is never
    called, only its two sub-networks, so it adds no scope level.
    """

    def __init__(self, model: CameraBranch) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.neck = model.neck
        self.vtransform = model.vtransform
        # A new nn.Module starts in training mode, and torch.onnx.export restores the *wrapper's* mode after it
        # exports, recursively: a wrapper left in training mode would silently flip the model's BatchNorms to
        # batch statistics. The wrapper takes the model's mode instead.
        self.train(model.training)

    def forward(self, img: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        B, N, _, H, W = (int(s) for s in img.shape)
        x = self.neck(self.backbone(img.view(B * N, 3, H, W)))[0]
        depth_weights, feat = self.vtransform.depth_and_features(x, depth.view(B * N, 1, H, W))
        return feat, depth_weights
