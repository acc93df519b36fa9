"""A model file for the CLI tests: ``gradwatch check tests/check/factory_file.py:make``."""

import math

import torch
from torch import nn


def make():
    """A 12-layer sigmoid MLP with standard init on 16 inputs: vanishing gradients."""
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        lin = nn.Linear(16, 16)
        b = 1 / math.sqrt(16)
        nn.init.uniform_(lin.weight, -b, b)
        nn.init.uniform_(lin.bias, -b, b)
        layers += [lin, nn.Sigmoid()]
    return nn.Sequential(*layers)


def make_healthy_with_inputs():
    """A small ReLU net with He init, and its own batch (no --input-shape needed)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model, torch.randn(8, 16)


def broken():
    raise RuntimeError("factory failed on purpose")
