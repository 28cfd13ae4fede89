"""Shared fixtures: one default model, one synthetic sample, and its stage outputs, built once per session."""

from __future__ import annotations

import pytest
import torch

import bevnb


@pytest.fixture(scope="session")
def model() -> bevnb.CameraBranch:
    return bevnb.build_camera_model(seed=0)


@pytest.fixture(scope="session")
def sample() -> dict:
    from bevnb.data import make_sample

    return make_sample("synthetic", seed=0)


@pytest.fixture(scope="session")
def stages(model, sample) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.forward_stages(sample)
