"""What the adversarial detectors share: a convolutional discriminator and the two sides of the
standard GAN objective (real = 1, generated = 0), on logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def discriminator(base_channels: int, downsamplings: int) -> nn.Sequential:
    """Strided 4x4 convolutions (no batch norm on the input layer), pooled to one logit."""
    widths = [base_channels * 2**i for i in range(downsamplings)]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip([1] + widths[:-1], widths)):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=i == 0)]
        layers += [nn.BatchNorm2d(c_out)] if i else []
        layers += [nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 1))


def critic_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(x))): the discriminator's side."""
    return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )


def fooling_loss(fake: torch.Tensor) -> torch.Tensor:
    """-log D(G(x)): the generator's side (the non-saturating form)."""
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def split_parameters(model: nn.Module, critic: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that are not the critic's."""
    excluded = {id(p) for p in critic.parameters()}
    return [p for p in model.parameters() if id(p) not in excluded]
