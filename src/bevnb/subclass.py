"""The split point: CUDA-BEVFusion's ``SubclassCameraModule`` (``qat/export-camera.py``), rebuilt.

The camera branch is cut where MIT BEVFusion would take the outer product ``depth ⊗ feat`` and pool it. What comes
before the cut becomes ``camera.backbone.onnx``; the outer product and the pooling are fused into one bev_pool kernel;
the downsample after it becomes ``camera.vtransform.onnx``.

This module also owns the split's interface, the names CUDA-BEVFusion's runtime binds (``camera-backbone.cu``,
``camera-vtransform.cu``): the two file names, each graph's ``(input names, output names)``, and the static shapes a
configuration (a rig) gives them (``io_shapes``).

The detection head after the branch is a third graph, ``head.bbox.onnx`` (CUDA-BEVFusion's name for its head graph):
``HeadGraphModule`` flattens the head's per-task maps into the outputs ``head_io`` names; decoding the maps into boxes
stays outside the graph (``model.box_coder.decode``), as upstream decodes on the host side of the engine.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import R50, CameraConfig
from .model import SMALL_WIDTHS, CameraBranch, DetectionHead, HeadConfig
from .tables import Table

BACKBONE_FILE = "camera.backbone.onnx"
VTRANSFORM_FILE = "camera.vtransform.onnx"
HEAD_FILE = "head.bbox.onnx"
BACKBONE_IO = (("img", "depth"), ("camera_feature", "camera_depth_weights"))
VTRANSFORM_IO = (("feat_in",), ("feat_out",))


def head_io(head: HeadConfig = SMALL_WIDTHS) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``head.bbox.onnx``'s (input names, output names): ``camera_bev`` in; per task ``t`` its maps
    ``reg_t``, ``height_t``, ``dim_t``, ``rot_t``, ``vel_t``, ``heatmap_t`` out (mmdet3d's head order)."""
    outputs = tuple(f"{name}_{t}" for t in range(len(head.tasks)) for name, _ in head.heads(t))
    return ("camera_bev",), outputs


def head_io_shapes(config: CameraConfig = R50, head: HeadConfig = SMALL_WIDTHS) -> dict[str, tuple[int, ...]]:
    """Every input and output shape of ``head.bbox.onnx`` by name: ``camera_bev [1, C, X/2, Y/2]`` →
    ``[1, channels, X', Y']`` per map, ``(X', Y') = head.output_size((X/2, Y/2))`` (180×180 for R50)."""
    size = head.output_size(config.out_bev_size)
    channels = [c for t in range(len(head.tasks)) for _, c in head.heads(t)]
    inputs, outputs = head_io(head)
    shapes = {inputs[0]: (1, head.in_channels, *config.out_bev_size)}
    return shapes | {name: (1, c, *size) for name, c in zip(outputs, channels, strict=True)}


def io_shapes(config: CameraConfig = R50) -> dict[str, dict[str, tuple[int, ...]]]:
    """Every input and output shape of both graphs for ``config``, by file and tensor name (inputs first):

    ``img [1, N, 3, iH, iW]``, ``depth [1, N, 1, iH, iW]`` → ``camera_feature [N, fH, fW, C]``,
    ``camera_depth_weights [N, D, fH, fW]``; ``feat_in [1, Z·C, X, Y]`` → ``feat_out [1, Z·C, X/2, Y/2]``.
    """
    N, (iH, iW), (fH, fW) = config.num_cameras, config.image_size, config.feature_size
    D, C, ZC = config.depth_bins, config.out_channels, config.bev_channels
    shapes = ((1, N, 3, iH, iW), (1, N, 1, iH, iW), (N, fH, fW, C), (N, D, fH, fW))
    return {
        BACKBONE_FILE: dict(zip(BACKBONE_IO[0] + BACKBONE_IO[1], shapes, strict=True)),
        VTRANSFORM_FILE: {"feat_in": (1, ZC, *config.bev_size), "feat_out": (1, ZC, *config.out_bev_size)},
    }


def io_table(config: CameraConfig = R50) -> Table:
    """``io_shapes(config)`` as a table: graph, input/output, name, shape."""
    io = {BACKBONE_FILE: BACKBONE_IO, VTRANSFORM_FILE: VTRANSFORM_IO}
    rows = [
        (graph, "input" if name in io[graph][0] else "output", name, list(shape))
        for graph, shapes in io_shapes(config).items()
        for name, shape in shapes.items()
    ]
    return Table(rows, ("graph", "", "tensor", "shape"), "the split's I/O (static shapes)")


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


class HeadGraphModule(nn.Module):
    """``forward(camera_bev [1, C, X, Y])`` → the head's maps as one flat tuple, in ``head_io(head.config)`` order.

    ``decoder`` and ``heads`` are registered directly (not under ``head.``); the exporter adds no scope level for
    an ``nn.ModuleDict``, so node names read ``/backbone/…``, ``/neck/…``, ``/object/task_heads.0/…``. The wrapper
    takes the head's mode, as ``SubclassCameraModule`` does.
    """

    def __init__(self, head: DetectionHead) -> None:
        super().__init__()
        self.decoder = head.decoder
        self.heads = head.heads
        self.train(head.training)

    def forward(self, camera_bev: Tensor) -> tuple[Tensor, ...]:
        tasks = self.heads["object"](self.decoder["neck"](self.decoder["backbone"](camera_bev)))
        return tuple(tensor for maps in tasks for tensor in maps.values())  # each dict is in config.heads(t) order
