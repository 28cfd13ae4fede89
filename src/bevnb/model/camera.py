"""The camera branch of BEVFusion-R50 (``encoders.camera``) and its default weights."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from ..bevpool import bev_pool
from ..config import R50, CameraConfig
from ..geometry import depth_map, plan_bev_pool
from .checkpoint import CameraCheckpoint, CheckpointError, load_camera_state, read_checkpoint
from .fold import fold_batchnorm
from .neck import GeneralizedLSSFPN
from .resnet import Bottleneck, ResNet50
from .seeded import estimating_batchnorm_statistics, kaiming_init
from .vtransform import DERIVED_BUFFERS, DepthLSSTransform


class CameraBranch(nn.Module):
    """``encoders.camera`` of BEVFusion: ``backbone`` (ResNet50), ``neck`` (GeneralizedLSSFPN), ``vtransform``
    (DepthLSSTransform). ``state_dict()`` keys are the upstream ones below ``encoders.camera.``.

    ``forward(sample)`` is MIT's ``extract_camera_features`` for one sample dict (images + lidar points + matrices)
    → BEV ``[1, 80, 180, 180]``; ``forward_stages(sample)`` returns every stage on the way.
    """

    def __init__(self, config: CameraConfig = R50) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNet50()
        self.neck = GeneralizedLSSFPN(out_channels=config.in_channels)
        self.vtransform = DepthLSSTransform(config)

    def image_features(self, img: Tensor) -> Tensor:
        """``img [B, N, 3, iH, iW]`` → neck level 0 ``[B·N, 256, fH, fW]`` (BEVFusion keeps the first level)."""
        return self.neck(self.backbone(img.flatten(0, 1)))[0]

    def forward_stages(self, sample: dict) -> dict[str, Tensor]:
        """Run the branch on a sample dict (batch 1) and return every stage's output by name:

        ``layer2/3/4`` → ``neck`` ``[N, 256, fH, fW]``; ``depth_map`` ``[1, N, 1, iH, iW]`` → ``dtransform``
        ``[N, 64, fH, fW]``; → ``depth_weights`` ``[N, D, fH, fW]`` and ``features`` ``[N, fH, fW, C]`` →
        ``bev`` ``[1, C, X, Y]`` → ``bev_downsampled`` ``[1, C, X/2, Y/2]``.

        bev_pool here is the chunked PyTorch reference: it never materialises the outer product.
        """
        img = sample["img"]
        if img.shape[0] != 1:
            raise ValueError(f"the camera branch runs one sample at a time, got batch {img.shape[0]}")
        vt = self.vtransform
        levels = self.backbone(img.flatten(0, 1))
        neck = self.neck(levels)[0]
        depth = depth_map(sample, self.config)
        seen: dict[str, Tensor] = {}
        hook = vt.dtransform.register_forward_hook(lambda module, args, out: seen.update(dtransform=out))
        try:
            depth_weights, features = vt.depth_and_features(neck, depth.flatten(0, 1))
        finally:
            hook.remove()
        bev = bev_pool(depth_weights, features, plan_bev_pool(sample, self.config))
        return {
            "layer2": levels[0],
            "layer3": levels[1],
            "layer4": levels[2],
            "neck": neck,
            "depth_map": depth,
            "dtransform": seen["dtransform"],
            "depth_weights": depth_weights,
            "features": features,
            "bev": bev,
            "bev_downsampled": vt.downsample(bev),
        }

    def forward(self, sample: dict) -> Tensor:
        """Monolithic forward of a sample dict → BEV ``[1, C, X/2, Y/2]`` (``[1, 80, 180, 180]`` for R50)."""
        return self.forward_stages(sample)["bev_downsampled"]


def build_camera_model(
    checkpoint: str | Path | CameraCheckpoint | None = None, seed: int = 0, config: CameraConfig = R50
) -> CameraBranch:
    """The camera branch in eval mode.

    * ``checkpoint=None``: deterministic random weights from ``seed`` (see ``init_default_weights``), the same for
      every ``config`` with the same channels and depth bins, and computed once per process;
    * a path or a ``CameraCheckpoint``: a MIT checkpoint, a plain camera state dict, a CUDA-BEVFusion PTQ pickle
      (BatchNorm already folded: the model is folded the same way before loading), or ``training/train.py``'s file
      (``data/training/weights.pth``), whose backbone and neck are the seeded ones of its ``backbone_seed``, made
      here as for ``checkpoint=None``. Learned weights load strictly;
      the derived buffers (``vtransform.dx``, ``bx``, ``nx``, ``frustum``) come from ``config``, and when the
      checkpoint's differ (it was made for another rig) one line says which, from what to what.
    """
    model = CameraBranch(config)
    sizes = replace(R50, in_channels=config.in_channels, out_channels=config.out_channels, dbound=config.dbound)
    if checkpoint is None:
        model.load_state_dict(_default_weights(seed, sizes), strict=False)  # the derived buffers stay the model's
    else:
        ckpt = checkpoint if isinstance(checkpoint, CameraCheckpoint) else read_checkpoint(checkpoint)
        if ckpt.bn_folded:
            fold_batchnorm(model)
        state = ckpt.state_dict
        if not any(k.startswith(REGENERATED) for k in state):
            if ckpt.backbone_seed is None:
                raise CheckpointError("no backbone/neck weights and no meta['backbone_seed'] to regenerate them from")
            seeded = _default_weights(ckpt.backbone_seed, sizes)
            state = {k: v for k, v in seeded.items() if k.startswith(REGENERATED)} | state
        notice = load_camera_state(model, state, DERIVED_KEYS)
        if notice:
            print(notice)
    return model.eval()


DERIVED_KEYS = tuple(f"vtransform.{name}" for name in DERIVED_BUFFERS)
REGENERATED = ("backbone.", "neck.")  # the parts a trained file leaves to its backbone_seed (frozen in training)


@cache
def _default_weights(seed: int, config: CameraConfig) -> dict[str, Tensor]:
    """The learned tensors of ``init_default_weights(seed)``, made once per process and configuration: they do not
    depend on the input size or the grid, only on the channels and depth bins."""
    model = CameraBranch(config)
    init_default_weights(model, seed)
    return {k: v for k, v in model.state_dict().items() if k not in DERIVED_KEYS}


@torch.no_grad()
def init_default_weights(model: CameraBranch, seed: int = 0) -> None:
    """Seeded, well-conditioned random weights, so that fp32-vs-int8 comparisons later mean something.

    Kaiming-normal convs, then every BatchNorm's running statistics re-estimated on a seeded random input: two
    cameras of multi-scale noise (flat regions, edges and texture, like a real image), a sparse depth map, and a
    sparse BEV-like map for the downsample. Each BN then normalises its input to about N(0, 1), so activations stay
    O(1) through all 16 bottlenecks and the depth softmax is neither collapsed nor flat. Same seed, same weights; the
    statistics inputs have R50's sizes whatever the configuration, so every rig gets the same weights.
    """
    g = torch.Generator().manual_seed(seed)
    kaiming_init(model, g)
    # Residual branches start small (bn3 γ = 0.2, in the spirit of zero-init-residual, Goyal et al. 2017). With
    # γ = 1 every bottleneck adds a fresh unit-size random function and the net turns chaotic: a small input
    # perturbation grows through the 16 blocks, and no fp16 or int8 comparison would mean anything.
    for block in model.backbone.modules():
        if isinstance(block, Bottleneck):
            nn.init.constant_(block.bn3.weight, 0.2)
    # Depth logits with std ≈ 2 over 118 bins: a peaked but not one-hot distribution.
    nn.init.normal_(
        model.vtransform.depthnet[-1].weight, std=2.0 * (2.0 / model.config.in_channels) ** 0.5, generator=g
    )

    cfg = model.config
    iH, iW = R50.image_size
    img = _multiscale_noise((2, 3, iH, iW), g)
    sparse = torch.rand(2, 1, iH, iW, generator=g) < 0.02
    depth = torch.where(sparse, 1.0 + 59.0 * torch.rand(2, 1, iH, iW, generator=g), torch.zeros(()))
    X, Y = R50.bev_size
    bev = torch.relu(torch.randn(1, cfg.bev_channels, X // 2, Y // 2, generator=g)) * 3.0
    with estimating_batchnorm_statistics(model):
        model.vtransform.depth_and_features(model.image_features(img[None]), depth)
        model.vtransform.downsample(bev)


def _multiscale_noise(shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Unit-variance noise with power at every scale from 1 to 64 px (a crude natural-image spectrum)."""
    img = torch.zeros(shape)
    for k in (1, 4, 16, 64):
        noise = torch.randn(shape[0], shape[1], shape[2] // k, shape[3] // k, generator=g)
        img += nn.functional.interpolate(noise, size=shape[2:], mode="bilinear", align_corners=False)
    return img / img.std()
