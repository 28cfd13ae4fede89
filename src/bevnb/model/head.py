"""The camera-only detection head after the camera branch: MIT BEVFusion's ``decoder`` + ``heads.object``.

The structure is MIT BEVFusion's camera-only CenterHead config (``configs/nuscenes/det/centerhead/lssfpn/camera/
256x704/resnet/default.yaml`` at ``db75150``), with the module names of mmdet3d and mmcv, so that ``state_dict()``
keys are MIT's layout:

* ``decoder.backbone`` — ``GeneralizedResNet``: stages of mmcv ``BasicBlock`` s (``make_res_layer``), each stage's
  output returned. Keys ``decoder.backbone.{stage}.{block}.conv1/bn1/conv2/bn2`` and ``….downsample.0/1``.
  For the BEV ``[1, 80, 180, 180]`` and strides (2, 2, 1): ``[1, c0, 90, 90]``, ``[1, c1, 45, 45]``,
  ``[1, c2, 45, 45]``.
* ``decoder.neck`` — ``LSSFPN`` (``in_indices [-1, 0]``): the last stage resized (bilinear, align_corners=True) to the
  first one's size, concatenated after it, then ``fuse`` (1×1 conv + BN + ReLU, 3×3 conv + BN + ReLU) and, for
  ``scale_factor 2``, ``upsample`` (bilinear ×2, align_corners=True, then 3×3 conv + BN + ReLU): ``[1, n, 180, 180]``.
  Keys ``decoder.neck.fuse.{0,1,3,4}``, ``decoder.neck.upsample.{1,2}``.
* ``heads.object`` — ``CenterHead``: ``shared_conv`` (mmcv ConvModule, 3×3 to 64 channels + BN + ReLU), then one
  ``SeparateHead`` per task, ``task_heads.{t}.{reg,height,dim,rot,vel,heatmap}``: each a ConvModule (3×3, 64
  channels) and a final 3×3 conv with bias (``final_kernel 3``) to ``reg [2]``, ``height [1]``, ``dim [3]``,
  ``rot [2]`` (sin, cos), ``vel [2]`` and ``heatmap`` (one logit per class of the task, bias initialised to −2.19).

Where bevnb differs from MIT's config, and why:

* **Tasks**: the synthetic street holds cars and pedestrians only, so the head has two tasks, ``[car]`` and
  ``[pedestrian]`` (nuScenes class names), instead of MIT's six tasks over ten classes.
* **Widths**: ``SMALL_WIDTHS`` (the default) is narrower than MIT's, so that the head trains on a 2-core CPU:
  backbone stages of 32/64/128 channels, a 64-channel neck and 32-channel task heads, against MIT's 128/256/512,
  256 and 64 (``MIT_WIDTHS``). The shared conv keeps MIT's 64 channels. At 180×180 the twelve task-head convs cost
  the most, which is why their width is reduced too. With ``MIT_WIDTHS`` the parameter shapes are MIT's, so MIT's
  ``decoder.*`` and the car task of ``heads.object.*`` load into it.
* **Input**: MIT's camera-only config feeds the decoder a 128×128 BEV of 0.8 m cells; here it is the camera branch's
  ``[1, 80, 180, 180]`` (0.6 m cells after the vtransform downsample), so the head's maps are 180×180 and
  ``out_size_factor`` is 2 relative to the 0.3 m bev_pool grid (see ``box_coder.BoxCoder``).
* **Default weights**: seeded (``init_default_weights``), as the camera branch's: the convolutions are
  Kaiming-normal as mmdet3d's ``SeparateHead`` initialises them, and every BatchNorm's statistics are estimated on a
  seeded random BEV, so an untrained head's outputs are O(1) rather than whatever the default init gives.

Maps follow the BEV's layout: rows are x, columns are y (MIT's fork of CenterHead indexes its heatmap the same way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .neck import ConvModule
from .seeded import estimating_batchnorm_statistics, kaiming_init
from .vtransform import conv_bn_relu

Stage = tuple[int, int, int]  # (num_blocks, out_channels, stride), as GeneralizedResNet's ``blocks``
COMMON_HEADS = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))  # name, channels
HEATMAP_BIAS = -2.19  # SeparateHead's init_bias: sigmoid(-2.19) ≈ 0.1, the prior of a peak
NUSCENES_TASKS = (
    ("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",), ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)  # fmt: skip
"""The tasks of MIT's nuScenes CenterHead configs (``configs/nuscenes/det/centerhead/default.yaml``)."""


@dataclass(frozen=True)
class HeadConfig:
    """Widths and tasks of the head. ``blocks``: the decoder backbone's stages as ``(num_blocks, out_channels,
    stride)``; ``neck_channels``: LSSFPN's ``out_channels``; ``tasks``: class names per task (nuScenes names)."""

    in_channels: int = 80
    blocks: tuple[Stage, ...] = ((2, 32, 2), (2, 64, 2), (2, 128, 1))
    neck_channels: int = 64
    scale_factor: int = 2
    share_conv_channels: int = 64
    head_conv: int = 32
    final_kernel: int = 3
    tasks: tuple[tuple[str, ...], ...] = (("car",), ("pedestrian",))

    def __post_init__(self) -> None:
        if len(self.blocks) < 2:
            raise ValueError(
                f"the decoder needs at least two stages (LSSFPN reads the first and last), got {self.blocks}"
            )
        if self.scale_factor < 1 or not self.tasks or not all(self.tasks):
            raise ValueError(f"scale_factor must be ≥ 1 and every task needs a class, got {self}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes of all tasks in task order: ``("car", "pedestrian")`` by default."""
        return tuple(name for task in self.tasks for name in task)

    def heads(self, task: int) -> tuple[tuple[str, int], ...]:
        """``(name, channels)`` of task ``task``'s maps, in mmdet3d's order: the common heads, then ``heatmap``."""
        return (*COMMON_HEADS, ("heatmap", len(self.tasks[task])))

    @property
    def map_stride(self) -> float:
        """Input BEV cells per cell of the head's maps: the first stage's stride over the neck's upsampling (1 for
        MIT's stages: stride 2, then ×2)."""
        return self.blocks[0][2] / self.scale_factor

    def output_size(self, bev_size: tuple[int, int]) -> tuple[int, int]:
        """(X, Y) of the head's maps for an input BEV of ``bev_size``: the first stage's size × ``scale_factor``."""
        stride = self.blocks[0][2]
        return tuple(-(-n // stride) * self.scale_factor for n in bev_size)


SMALL_WIDTHS = HeadConfig()
"""bevnb's default: narrow enough to train on a 2-core CPU (see the module docstring)."""
MIT_WIDTHS = HeadConfig(blocks=((2, 128, 2), (2, 256, 2), (2, 512, 1)), neck_channels=256, head_conv=64)
"""MIT's widths (``decoder.backbone.blocks``, ``decoder.neck.out_channels 256``) with bevnb's two tasks."""


class BasicBlock(nn.Module):
    """mmcv's ``BasicBlock``: 3×3 (carries the stride) + BN + ReLU, 3×3 + BN, plus the identity or ``downsample``
    (1×1 conv with the stride + BN), then ReLU. ``[B, C_in, H, W]`` → ``[B, C_out, H / stride, W / stride]``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class GeneralizedResNet(nn.ModuleList):
    """mmdet3d's ``GeneralizedResNet``: one ``nn.Sequential`` of BasicBlocks per stage (mmcv's ``make_res_layer``:
    the first block carries the stride). ``forward(x [B, C_in, X, Y])`` → every stage's output, ``[B, c_i, X_i,
    Y_i]``."""

    def __init__(self, in_channels: int, blocks: tuple[Stage, ...]) -> None:
        super().__init__()
        for num_blocks, out_channels, stride in blocks:
            layer = [BasicBlock(in_channels, out_channels, stride)]
            layer += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
            self.append(nn.Sequential(*layer))
            in_channels = out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for stage in self:
            x = stage(x)
            outputs.append(x)
        return outputs


class LSSFPN(nn.Module):
    """mmdet3d's ``LSSFPN`` with ``in_indices (-1, 0)``: ``forward([s0 [B, c0, X0, Y0], …, sN [B, cN, XN, YN]])`` →
    ``[B, out_channels, X0·scale_factor, Y0·scale_factor]``.

    The resize size is a pair of Python ints, so the ONNX Resize gets constant sizes (as in ``GeneralizedLSSFPN``).
    """

    def __init__(self, in_channels: tuple[int, int], out_channels: int, scale_factor: int = 1) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.fuse = nn.Sequential(
            *conv_bn_relu(in_channels[0] + in_channels[1], out_channels, 1, bias=False),
            *conv_bn_relu(out_channels, out_channels, 3, bias=False),
        )
        if scale_factor > 1:
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=True),
                *conv_bn_relu(out_channels, out_channels, 3, bias=False),
            )

    def forward(self, x: list[Tensor]) -> Tensor:
        x1, x2 = x[-1], x[0]
        size = [int(s) for s in x2.shape[-2:]]
        x1 = F.interpolate(x1, size=size, mode="bilinear", align_corners=True)
        out = self.fuse(torch.cat([x1, x2], dim=1))
        return self.upsample(out) if self.scale_factor > 1 else out


class SeparateHead(nn.Module):
    """One task's maps: for each ``(name, channels)`` an ``nn.Sequential`` of a ConvModule (``head_conv`` channels)
    and a final conv with bias, both ``final_kernel`` × ``final_kernel``. ``forward(x [B, C, X, Y])`` →
    ``{name: [B, channels, X, Y]}``."""

    def __init__(self, in_channels: int, heads: tuple[tuple[str, int], ...], head_conv: int, final_kernel: int):
        super().__init__()
        self.names = tuple(name for name, _ in heads)
        for name, channels in heads:
            final = nn.Conv2d(head_conv, channels, final_kernel, padding=final_kernel // 2, bias=True)
            self.add_module(name, nn.Sequential(ConvModule(in_channels, head_conv, final_kernel), final))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: getattr(self, name)(x) for name in self.names}


class CenterHead(nn.Module):
    """mmdet3d's ``CenterHead`` (layers only; targets and decoding are in ``box_coder``): ``shared_conv`` then one
    ``SeparateHead`` per task. ``forward(x [B, C, X, Y])`` → one ``{name: [B, channels, X, Y]}`` per task."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.shared_conv = ConvModule(config.neck_channels, config.share_conv_channels, 3)
        self.task_heads = nn.ModuleList(
            SeparateHead(config.share_conv_channels, config.heads(t), config.head_conv, config.final_kernel)
            for t in range(len(config.tasks))
        )

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        x = self.shared_conv(x)
        return [task(x) for task in self.task_heads]


class DetectionHead(nn.Module):
    """``decoder`` (``backbone``, ``neck``) and ``heads`` (``object``), under MIT BEVFusion's names.

    ``forward(bev [B, C_in, X, Y])`` → one dict per task of ``heatmap [B, n_classes, X', Y']`` (logits), ``reg [B, 2,
    X', Y']``, ``height [B, 1, …]`` (box centre z), ``dim [B, 3, …]`` (log of dx, dy, dz), ``rot [B, 2, …]`` (sin,
    cos of yaw), ``vel [B, 2, …]``, with ``(X', Y') = config.output_size((X, Y))``: ``[1, 80, 180, 180]`` →
    180×180 maps.
    """

    def __init__(self, config: HeadConfig = SMALL_WIDTHS) -> None:
        super().__init__()
        self.config = config
        stages = config.blocks
        self.decoder = nn.ModuleDict(
            {
                "backbone": GeneralizedResNet(config.in_channels, stages),
                "neck": LSSFPN((stages[-1][1], stages[0][1]), config.neck_channels, config.scale_factor),
            }
        )
        self.heads = nn.ModuleDict({"object": CenterHead(config)})

    def forward(self, bev: Tensor) -> list[dict[str, Tensor]]:
        x = self.decoder["neck"](self.decoder["backbone"](bev))
        return self.heads["object"](x)


def build_head(
    config: HeadConfig = SMALL_WIDTHS, seed: int = 0, bev_size: tuple[int, int] = (180, 180)
) -> DetectionHead:
    """The head with seeded default weights (``init_default_weights``), in eval mode. ``bev_size`` is the (X, Y) of
    the BEV it will see, the size of the random BEV its BatchNorm statistics are estimated on."""
    head = DetectionHead(config)
    init_default_weights(head, seed, bev_size)
    return head.eval()


@torch.no_grad()
def init_default_weights(head: DetectionHead, seed: int = 0, bev_size: tuple[int, int] = (180, 180)) -> None:
    """Seeded weights: Kaiming-normal convs (fan-in, ReLU gain; biases zero), ``heatmap`` biases at −2.19 as
    mmdet3d's ``SeparateHead.init_weights``, then every BatchNorm's running statistics estimated on one seeded
    random BEV ``[1, C_in, X, Y]`` (half-rectified Gaussian noise, like a BEV after ReLU), so that each normalises
    its input to about N(0, 1). Same seed and sizes, same weights."""
    g = torch.Generator().manual_seed(seed)
    kaiming_init(head, g)
    for task in head.heads["object"].task_heads:
        task.heatmap[-1].bias.fill_(HEATMAP_BIAS)
    bev = torch.relu(torch.randn(1, head.config.in_channels, *bev_size, generator=g))
    with estimating_batchnorm_statistics(head):
        head(bev)


def select_tasks(
    state: Mapping[str, Tensor],
    tasks: tuple[tuple[str, ...], ...],
    from_tasks: tuple[tuple[str, ...], ...] = NUSCENES_TASKS,
) -> dict[str, Tensor]:
    """The ``decoder.*`` and ``heads.object.*`` tensors of a checkpoint made for ``from_tasks`` (MIT's six nuScenes
    tasks by default), rearranged for ``tasks``: ``load_state_dict`` of a head with those tasks (and the
    checkpoint's widths, ``MIT_WIDTHS`` for MIT's) takes the result strictly.

    Each of ``tasks`` must draw its classes from one task of ``from_tasks``: it takes that task's head whole, except
    the heatmap's final conv, of which it keeps the rows of its classes (``[pedestrian]`` takes MIT's
    ``[pedestrian, traffic_cone]`` head and row 0 of its heatmap). Other keys (``encoders.*`` …) are left out.
    """
    out = {k: v for k, v in state.items() if k.startswith("decoder.") or k.startswith("heads.object.shared_conv.")}
    for t, task in enumerate(tasks):
        sources = {i for i, names in enumerate(from_tasks) for name in task if name in names}
        if len(sources) != 1 or not all(any(name in names for names in from_tasks) for name in task):
            raise ValueError(f"task {list(task)} must take all its classes from one of the tasks {from_tasks}")
        source = sources.pop()
        rows = [from_tasks[source].index(name) for name in task]
        prefix, new = f"heads.object.task_heads.{source}.", f"heads.object.task_heads.{t}."
        for key, value in state.items():
            if key.startswith(prefix):
                name = new + key[len(prefix) :]
                out[name] = value[rows] if name.startswith(f"{new}heatmap.1.") else value
    return out
