"""Shared fixtures, built once per session: the seeded init (``model``) and its stage outputs on one synthetic
sample; the chapters' and the CLI's default model (``trained``: the shipped trained weights) and the graphs exported
from it for the default rig and for the five-camera rig."""

from __future__ import annotations

import os

import pytest
import torch

import bevnb

# The tests check the defaults: a user's BEVNB_CHECKPOINT / BEVNB_RIG / BEVNB_CALIBRATION_FRAMES (bevnb.inputs) are for
# `make notebooks` and the CLI, not for them (tests/test_own_inputs.py sets them where it means to).
for _name in ("BEVNB_CHECKPOINT", "BEVNB_RIG", "BEVNB_CALIBRATION_FRAMES"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def model() -> bevnb.CameraBranch:
    """The untrained seeded init (seed 0): what the bit-for-bit tests against upstream's code and the digests use."""
    return bevnb.build_camera_model(seed=0)


@pytest.fixture(scope="session")
def trained() -> bevnb.CameraBranch:
    """The default model of the chapters and the CLI: the shipped trained weights (``inputs.current().model()``)."""
    return bevnb.inputs.current().model()


@pytest.fixture(scope="session")
def sample() -> dict:
    from bevnb.data import make_sample

    return make_sample("synthetic", seed=0)


@pytest.fixture(scope="session")
def stages(model, sample) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.forward_stages(sample)


@pytest.fixture(scope="session")
def onnx_dirs():
    """``onnx_dirs(precision)`` → ``build/onnx/<precision>`` with both graphs of the default (``trained``) model,
    shared with the chapters (``ensure_exported`` exports only when missing or stale; int8 reuses chapter 04's
    calibration)."""
    from bevnb.validation import ensure_exported

    made: dict[str, object] = {}

    def get(precision: str):
        if precision not in made:
            made[precision] = ensure_exported(precision, verbose=False)
        return made[precision]

    return get


@pytest.fixture(scope="session")
def five_rig():
    """The second shipped rig: five cameras, 384×1056 input, a 256×128 grid."""
    from bevnb.rig import FIVE_CAMERA_RIG_PATH, load_rig

    return load_rig(FIVE_CAMERA_RIG_PATH)


@pytest.fixture(scope="session")
def five_onnx(five_rig):
    """The fp16 graphs of the default (trained) weights for the five-camera rig, shared with chapter 08."""
    from bevnb.validation import ensure_exported

    return ensure_exported("fp16", verbose=False, config=five_rig.config)
