"""Scores of ENS-10 (Ashkboos et al., NeurIPS 2022 Datasets and Benchmarks, Sec. 4): the continuous ranked
probability score of a Gaussian forecast in closed form, of a finite ensemble, and the extreme-event weighted
CRPS, with the extreme forecast index that weights it. Plain torch, differentiable where a loss needs it.
"""

from __future__ import annotations

import math

import torch

_SQRT_PI = math.sqrt(math.pi)


def crps_gaussian(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CRPS of N(mu, sigma²) at the observation y, elementwise (Gneiting et al. 2005, eq. 5):
    ``σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π]`` with ``z = (y − μ)/σ``. ``sigma`` must be positive."""
    z = (y - mu) / sigma
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / _SQRT_PI)


class CRPSGaussianLoss(torch.nn.Module):
    """The mean Gaussian CRPS as a training loss, ``loss(mu, sigma, y)``, the loss of every ENS-10 baseline."""

    def forward(self, mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return crps_gaussian(mu, sigma, y).mean()


def crps_ensemble(members: torch.Tensor, y: torch.Tensor, dim: int = 0, fair: bool = True) -> torch.Tensor:
    """CRPS of an m-member ensemble at y: ``E|X − y| − ½ E|X − X'|`` with the sample means (Gneiting & Raftery
    2007, eq. 20). ``fair=True`` divides the spread term by m(m−1) instead of m² (Ferro 2014), which makes it
    an unbiased estimate of the CRPS of the distribution the members are drawn from."""
    m = members.shape[dim]
    if m < 2 and fair:
        raise ValueError("the fair ensemble CRPS needs at least 2 members")
    x = members.movedim(dim, 0)
    skill = (x - y.unsqueeze(0)).abs().mean(0)
    spread = (x.unsqueeze(0) - x.unsqueeze(1)).abs().sum((0, 1))
    return skill - spread / (2 * m * (m - 1) if fair else 2 * m * m)


def extreme_forecast_index(mu: torch.Tensor, sigma: torch.Tensor, climate: torch.Tensor,
                           levels: int = 99) -> torch.Tensor:
    """The extreme forecast index (Lalaurette 2003, eq. 3) of a Gaussian forecast against a model climate:
    ``EFI = (2/π) ∫₀¹ (p − F_f(q_p)) / √(p(1 − p)) dp``, where ``q_p`` are the climate's quantiles (``climate``
    holds samples along dim 0, e.g. the same calendar window of the training years; ``mu`` may have leading
    forecast dims, such as dates, before the point shape) and ``F_f`` the
    forecast's CDF. It is 0 when the forecast is the climate, and tends to +1 (−1) when it lies above
    (below) every climate value. The integral is the midpoint rule over ``levels`` probabilities."""
    p = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    q = torch.quantile(climate.double(), p, dim=0)  # [levels, *point shape]
    batch_dims = mu.dim() - (climate.dim() - 1)  # leading forecast dims (dates) before the point shape
    if batch_dims < 0 or tuple(mu.shape[batch_dims:]) != tuple(climate.shape[1:]):
        raise ValueError(f"climate {tuple(climate.shape)} must be [samples, *point shape] with the point shape "
                         f"ending mu's shape {tuple(mu.shape)}")
    q = q.reshape(levels, *([1] * batch_dims), *climate.shape[1:])
    z = (q - mu.double().unsqueeze(0)) / sigma.double().unsqueeze(0)
    forecast_cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    shape = (levels,) + (1,) * mu.dim()
    integrand = (p.view(shape) - forecast_cdf) / torch.sqrt(p * (1 - p)).view(shape)
    return (2 / math.pi * integrand.mean(0)).to(mu.dtype)


def ee_crps(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor, efi: torch.Tensor) -> torch.Tensor:
    """The extreme-event weighted CRPS of ENS-10: the Gaussian CRPS weighted by ``|EFI|``, averaged, so grid
    points where the ensemble signals an extreme count most."""
    return (efi.abs() * crps_gaussian(mu, sigma, y)).mean()
