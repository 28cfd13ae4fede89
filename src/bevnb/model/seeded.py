"""Seeded default weights, the two steps the camera branch and the detection head share.

* ``kaiming_init``: every conv Kaiming-normal (fan-in, ReLU gain) from one generator, conv biases zero, every
  BatchNorm reset (γ 1, β 0, running statistics 0 and 1);
* ``estimating_batchnorm_statistics``: inside it, forward passes on a seeded input set every BatchNorm's running
  statistics to that input's batch statistics (cumulative average, ``momentum=None``), so each BN normalises what it
  sees to about N(0, 1); on exit the momentum is PyTorch's default again, the batch counters zero, the module in
  eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def kaiming_init(module: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-normal convs (biases zero) and reset BatchNorms, in ``module.modules()`` order."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()


@contextmanager
def estimating_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Forward passes inside set the running statistics of every BatchNorm of ``module`` (see the module docstring)."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.train()
        bn.momentum = None  # cumulative average: after one batch, running stats = that batch's stats
    yield
    for bn in bns:
        bn.momentum = 0.1
        bn.num_batches_tracked.zero_()
    module.eval()
