"""ENS-10's post-processing baselines (Ashkboos et al. 2022, Sec. 5), each mapping a batch of grid inputs
``[batch, channels, lat, lon]`` to a Gaussian ``(mu, sigma)`` per grid point, trained with the Gaussian CRPS.

- :class:`EMOS` (Gneiting et al. 2005): ``μ = a + b·mean``, ``σ = softplus(c + d·spread)`` from the target
  variable's own ensemble mean and spread, the same coefficients everywhere. Gneiting's eq. 2 models the
  variance as ``c + d·S²``; a softplus of a linear function of the spread keeps σ positive without a
  constrained optimiser, as the ENS-10 code's linear spread model does.
- :class:`PointMLP`: the same per grid point, but an MLP over every channel (and the location channels).
- :class:`UNet`: a small U-Net over the grid (two down and two up stages), so it sees spatial context.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _gaussian(out: torch.Tensor, min_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    return out[:, 0], F.softplus(out[:, 1]) + min_sigma


class EMOS(nn.Module):
    def __init__(self, mean_channel: int, spread_channel: int, min_sigma: float = 1e-3):
        super().__init__()
        self.mean_channel, self.spread_channel, self.min_sigma = mean_channel, spread_channel, min_sigma
        self.mu = nn.Linear(1, 1)
        self.sigma = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x[:, self.mean_channel].unsqueeze(-1)
        spread = x[:, self.spread_channel].unsqueeze(-1)
        return self.mu(mean).squeeze(-1), F.softplus(self.sigma(spread).squeeze(-1)) + self.min_sigma


class PointMLP(nn.Module):
    def __init__(self, channels: int, hidden: int = 64, layers: int = 2, min_sigma: float = 1e-3):
        super().__init__()
        widths = [channels] + [hidden] * layers
        blocks = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(widths[-1], 2))
        self.min_sigma = min_sigma

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.body(x.movedim(1, -1)).movedim(-1, 1)  # channel-last: one MLP per grid point
        return _gaussian(out, self.min_sigma)


def _block(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                         nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())


class UNet(nn.Module):
    """Ronneberger et al. 2015 at ENS-10's scale: ``width``, 2·width, 4·width channels; any grid size (the
    skip connections are resized where a pooled size was odd)."""

    def __init__(self, channels: int, width: int = 16, min_sigma: float = 1e-3):
        super().__init__()
        self.down1, self.down2 = _block(channels, width), _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.up2, self.merge2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), _block(4 * width, 2 * width)
        self.up1, self.merge1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), _block(2 * width, width)
        self.head = nn.Conv2d(width, 2, 1)
        self.min_sigma = min_sigma

    @staticmethod
    def _join(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if up.shape[-2:] != skip.shape[-2:]:
            up = F.interpolate(up, size=skip.shape[-2:], mode="nearest")
        return torch.cat([up, skip], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.merge2(self._join(self.up2(b), d2))
        u1 = self.merge1(self._join(self.up1(u2), d1))
        return _gaussian(self.head(u1), self.min_sigma)
