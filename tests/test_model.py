"""The camera branch: upstream keys and shapes, stage shapes, default weights."""

from __future__ import annotations

import math

import pytest
import torch

import bevnb
from bevnb.config import R50

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (channels,)) for k in BN}


def upstream_camera_keys() -> dict[str, tuple[int, ...]]:
    """Every ``encoders.camera.*`` key of a BEVFusion-R50 checkpoint and its shape, written out from the reference
    (upstream-camera-branch.md §3.8), not from bevnb's model code."""
    keys: dict[str, tuple[int, ...]] = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    in_ch = 64
    for layer, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), 1):
        for k in range(blocks):
            p = f"backbone.layer{layer}.{k}"
            keys[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            keys[f"{p}.conv3.weight"] = (width * 4, width, 1, 1)
            keys.update(_bn(f"{p}.bn1", width) | _bn(f"{p}.bn2", width) | _bn(f"{p}.bn3", width * 4))
            if k == 0:
                keys[f"{p}.downsample.0.weight"] = (width * 4, in_ch, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", width * 4))
            in_ch = width * 4
    for i, cin in ((0, 768), (1, 3072)):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = (256, cin, 1, 1)
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (256, 256, 3, 3)
        keys.update(_bn(f"neck.lateral_convs.{i}.bn", 256) | _bn(f"neck.fpn_convs.{i}.bn", 256))
    v = "vtransform"
    keys.update({f"{v}.dx": (3,), f"{v}.bx": (3,), f"{v}.nx": (3,), f"{v}.frustum": (118, 32, 88, 3)})
    for idx, (cout, cin, k) in zip((0, 3, 6), ((8, 1, 1), (32, 8, 5), (64, 32, 5)), strict=True):
        keys[f"{v}.dtransform.{idx}.weight"] = (cout, cin, k, k)
        keys[f"{v}.dtransform.{idx}.bias"] = (cout,)
        keys.update(_bn(f"{v}.dtransform.{idx + 1}", cout))
    for idx, (cout, cin, k) in zip((0, 3, 6), ((256, 320, 3), (256, 256, 3), (198, 256, 1)), strict=True):
        keys[f"{v}.depthnet.{idx}.weight"] = (cout, cin, k, k)
        keys[f"{v}.depthnet.{idx}.bias"] = (cout,)
        if idx < 6:
            keys.update(_bn(f"{v}.depthnet.{idx + 1}", cout))
    for idx in (0, 3, 6):
        keys[f"{v}.downsample.{idx}.weight"] = (80, 80, 3, 3)
        keys.update(_bn(f"{v}.downsample.{idx + 1}", 80))
    return keys


def test_state_dict_matches_upstream_keys_and_shapes(model):
    expected = upstream_camera_keys()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(own.keys() - expected.keys()) == []  # no extra keys
    assert sorted(expected.keys() - own.keys()) == []  # none missing
    assert {k: own[k] for k in expected} == expected
    assert len(own) == 401


def test_grid_buffers_hold_the_r50_constants(model):
    vt = model.vtransform
    assert vt.nx.tolist() == [360, 360, 1] and vt.nx.dtype == torch.int64
    assert torch.allclose(vt.dx, torch.tensor([0.3, 0.3, 20.0]))
    assert torch.allclose(vt.bx, torch.tensor([-53.85, -53.85, 0.0]))
    assert vt.frustum[0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert vt.frustum[-1, -1, -1].tolist() == pytest.approx([703.0, 255.0, 59.5])
    assert R50.depth_bins == 118 and R50.frustum_points == 1_993_728


def test_stage_shapes_for_six_cameras(model, stages):
    shapes = {name: list(t.shape) for name, t in stages.items()}
    assert shapes == {
        "layer2": [6, 512, 32, 88],
        "layer3": [6, 1024, 16, 44],
        "layer4": [6, 2048, 8, 22],
        "neck": [6, 256, 32, 88],
        "depth_map": [1, 6, 1, 256, 704],
        "dtransform": [6, 64, 32, 88],
        "depth_weights": [6, 118, 32, 88],
        "features": [6, 32, 88, 80],
        "bev": [1, 80, 360, 360],
        "bev_downsampled": [1, 80, 180, 180],
    }
    assert torch.allclose(stages["depth_weights"].sum(1), torch.ones(6, 32, 88), atol=1e-5)


def test_default_weights_are_well_conditioned(stages):
    for name, t in stages.items():
        assert torch.isfinite(t).all(), name
    # Activations stay O(1) through the 16 bottlenecks.
    assert 0.1 < stages["neck"].std().item() < 10
    # The depth distribution is peaked but not one-hot: entropy well between 0 and log(118) = 4.77 nats.
    p = stages["depth_weights"]
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean().item()
    assert 1.0 < entropy < 0.9 * math.log(118)
    assert stages["bev_downsampled"].abs().max().item() > 0


def test_default_weights_are_deterministic_per_seed(model):
    again = bevnb.build_camera_model(seed=0).state_dict()
    other = bevnb.build_camera_model(seed=1).state_dict()
    own = model.state_dict()
    assert all(torch.equal(own[k], again[k]) for k in own)
    assert not torch.equal(own["backbone.conv1.weight"], other["backbone.conv1.weight"])


def test_monolithic_forward_equals_the_last_stage(model, sample, stages):
    with torch.no_grad():
        bev = model(sample)
    assert bev.shape == (1, 80, 180, 180)
    assert torch.equal(bev, stages["bev_downsampled"])


def test_batch_of_two_is_rejected_with_a_clear_message(model, sample):
    two = dict(sample, img=sample["img"].expand(2, -1, -1, -1, -1))
    with pytest.raises(ValueError, match="one sample at a time"):
        model.forward_stages(two)
