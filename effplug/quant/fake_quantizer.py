"""``FakeQuantize``: quantize-dequantize in the forward pass, with pluggable range estimators and gradients.

Grids (integer codes ``q``, value ``(q - zero_point) * scale``):

- ``symmetric``: ``q in [-2^(b-1), 2^(b-1) - 1]`` (``restricted``: ``[-(2^(b-1) - 1), 2^(b-1) - 1]``),
  zero-point 0, ``scale = clip / 2^(b-1)`` (or ``/ (2^(b-1) - 1)``);
- ``unsigned``: ``q in [0, 2^b - 1]``, zero-point 0, for inputs that are never negative (after ReLU);
- ``asymmetric``: ``q in [0, 2^b - 1]`` with an integer zero-point, ``scale = (max - min) / (2^b - 1)``.

Estimators: ``minmax``, ``percentile``, ``mse`` (grid search), ``octav`` (OCTAV eq. 6), and the learned ones:
``lsq`` (Esser et al. 2020, eq. 1-3 and the gradient scale ``g = 1/sqrt(N * Q_P)``), ``lsq+`` (Bhalgat et
al. 2020: LSQ with a learned offset), ``pact`` (Choi et al. 2018, eq. 1-3), ``dorefa`` (Zhou et al. 2016, eq. 9,
weights). Gradients of the non-learned estimators: ``ste`` (clipped straight-through: 1 inside, 0 outside)
or ``mad`` (OCTAV sec. 4: 1 inside, ``clip/|x|`` outside).
"""

from __future__ import annotations

import enum
import logging
import math

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from effplug import kernels
from effplug.logs import log_once
from effplug.quant import estimators
from effplug.quant.quantizer import Quantizer
from effplug.quant.ste import pow2_ste, round_ste, scale_grad

MODES = ("symmetric", "unsigned", "asymmetric", "auto")


class Grid(enum.IntEnum):
    """The code grid a quantizer uses; stored as the int8 buffer ``grid`` (so checkpoints keep their values)."""

    AUTO = -1  # not decided yet: the first batch picks UNSIGNED (never negative) or SYMMETRIC
    UNSIGNED = 0
    SYMMETRIC = 1
    ASYMMETRIC = 2


_GRID_OF_MODE = {"auto": Grid.AUTO, "unsigned": Grid.UNSIGNED, "symmetric": Grid.SYMMETRIC,
                 "asymmetric": Grid.ASYMMETRIC}
_MODE_OF_GRID = {v: k for k, v in _GRID_OF_MODE.items()}
log = logging.getLogger("effplug.quant")

# Fused optimizers (``adamw_torch_fused``, HF's default on recent torch) update weights without bumping
# ``weight._version``, so a weight's range cannot be cached on its version alone. Every torch optimizer step
# (fused, foreach, plain; DeepSpeed's and FSDP2's inner optimizers too) advances this counter instead.
_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def code_range(bits: int, mode: str, restricted: bool = False, reduce_range: bool = False) -> tuple[int, int]:
    if mode == "symmetric":
        half = 2 ** (bits - 1)
        return (-(half - 1) if restricted else -half), half - 1
    top = 2**bits - 1
    if reduce_range and bits == 8:
        top = 127
    return 0, top


def broadcast_channels(x: torch.Tensor, v: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    """A per-channel vector shaped to broadcast against ``x`` (a scalar when ``channel_dim`` is None)."""
    if channel_dim is None:
        return v.reshape(())
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return v.reshape(shape)


def _agree_across_ranks(values: tuple, asymmetric: bool) -> tuple:
    """Data-parallel ranks see different batches: average clips (min/max for affine ranges) so every rank
    keeps the same activation ranges, as DDP keeps the same weights."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    out = []
    for i, v in enumerate(values):
        v = v.clone()
        if asymmetric:
            dist.all_reduce(v, op=dist.ReduceOp.MIN if i == 0 else dist.ReduceOp.MAX)
        else:
            dist.all_reduce(v)
            v /= dist.get_world_size()
        out.append(v)
    return tuple(out)


class _QuantizeDequantize(torch.autograd.Function):
    """Round-to-nearest on a fixed grid (``effplug.kernels.fake_quantize``: Triton on CUDA); backward is
    the clipped STE or magnitude-aware (MAD)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, mad, channel_dim):
        out = kernels.fake_quantize(x, scale.reshape(-1), zero_point.reshape(-1), qmin, qmax, channel_dim)
        ctx.save_for_backward(x, (qmin - zero_point) * scale, (qmax - zero_point) * scale)
        ctx.mad = mad
        return out

    @staticmethod
    def backward(ctx, grad):
        x, low, high = ctx.saved_tensors
        inside = (x >= low) & (x <= high)
        if not ctx.mad:
            return grad * inside, None, None, None, None, None, None
        bound = torch.where(x > high, high, low).abs()
        factor = torch.where(inside, torch.ones_like(x), bound / x.abs().clamp_min(1e-30))
        return grad * factor, None, None, None, None, None, None


class FakeQuantize(Quantizer):
    """Quantize-dequantize one tensor (a weight or a layer's input activation).

    ``FakeQuantize(bits, estimator, ...)`` builds the class of that estimator: ``RangeQuantizer`` (minmax,
    percentile, mse, octav), ``LSQQuantizer`` (lsq, lsq+), ``PACTQuantizer`` or ``DoReFaQuantizer``.
    ``channel_dim`` gives one range per channel (weights); ``None`` one per tensor.
    """

    estimators: tuple = ()
    learned = False

    def __new__(cls, bits: int = 8, estimator: str = "minmax", *args, **kwargs):
        if cls is FakeQuantize:
            kinds = {name: kind for kind in (RangeQuantizer, LSQQuantizer, PACTQuantizer, DoReFaQuantizer)
                     for name in kind.estimators}
            if estimator not in kinds:
                raise ValueError(f"estimator={estimator!r} is not supported; use one of {', '.join(kinds)}")
            cls = kinds[estimator]
        return super().__new__(cls)

    def __init__(self, bits: int, estimator: str = "minmax", role: str = "weight", mode: str = "symmetric",
                 channel_dim: int | None = None, channels: int = 1, gradient: str = "ste", restricted: bool = False,
                 power_of_two: bool = False, reduce_range: bool = False, momentum: float = 0.1,
                 percentile: float = 99.99):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; use one of {', '.join(MODES)}")
        if estimator not in self.estimators:
            raise ValueError(f"{type(self).__name__} takes estimator {' or '.join(self.estimators)}; got {estimator!r}")
        self.bits, self.estimator, self.role, self.gradient = bits, estimator, role, gradient
        self.channel_dim, self.restricted, self.power_of_two = channel_dim, restricted, power_of_two
        self.reduce_range, self.momentum, self.percentile = reduce_range, momentum, percentile
        self.rows = channels if channel_dim is not None else 1  # one range per channel, or one per tensor
        self.register_buffer("grid", torch.tensor(int(_GRID_OF_MODE[self._mode_for(mode)]), dtype=torch.int8))
        self.register_buffer("initialized", torch.tensor(False))

    def _mode_for(self, mode: str) -> str:
        """The grid a requested ``mode`` becomes for this kind (LSQ+ is affine, DoReFa symmetric)."""
        return mode

    # ---- grid -----------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return _MODE_OF_GRID[Grid(int(self.grid))]

    def code_range(self) -> tuple[int, int]:
        mode = "symmetric" if self.mode == "symmetric" else "unsigned"
        return code_range(self.bits, mode, self.restricted, self.reduce_range and self.role == "act")

    def _steps_per_clip(self) -> int:
        qmin, qmax = self.code_range()
        return -qmin if self.mode == "symmetric" else qmax

    def _shape(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return broadcast_channels(x, v, self.channel_dim)

    def extra_repr(self) -> str:
        per = "per-tensor" if self.channel_dim is None else f"per-channel(dim={self.channel_dim})"
        return f"bits={self.bits}, {self.estimator}, {self.mode}, {per}, grad={self.gradient}"

    @torch.no_grad()
    def _decide_grid(self, x: torch.Tensor) -> None:
        if int(self.grid) == Grid.AUTO:
            self.grid.fill_(int(Grid.SYMMETRIC if bool((x < 0).any()) else Grid.UNSIGNED))

    def _skip_nonfinite(self, what: str) -> None:
        log_once(log, f"nonfinite-{self.role}",
                 "effplug.quant: a batch with inf/NaN %s values reached a %s quantizer; its range was left as it was "
                 "(no statistic is updated from non-finite values). Reported once.", what, self.role)

    # ---- what each kind defines -----------------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> None:
        """Update the range from ``x`` (what the forward pass does in training)."""
        self._decide_grid(x)

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` broadcastable against ``x``; differentiable for learned ranges."""
        raise NotImplementedError

    def _scale(self, scale: torch.Tensor) -> torch.Tensor:
        return pow2_ste(scale) if self.power_of_two else scale

    def integer_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes, scale, zero_point)`` of ``x`` as the forward pass quantizes it (for export)."""
        with torch.no_grad():
            if self.role == "weight":
                self.observe(x.float())  # the range the next forward would use (refreshed if the weight moved)
            scale, zero = self.qparams(x.float())
            qmin, qmax = self.code_range()
            dim = self.channel_dim if scale.dim() else None
            codes = kernels.quantization_codes(x, scale.reshape(-1), zero.reshape(-1), qmin, qmax, dim)
            return codes, scale, zero

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed-grid rounding with this kind's gradient (STE or MAD): observer-based kinds."""
        qmin, qmax = self.code_range()
        scale, zero = self.qparams(x)
        dim = self.channel_dim if scale.dim() else None
        return _QuantizeDequantize.apply(x, scale.detach(), torch.as_tensor(zero, device=x.device).detach(),
                                         qmin, qmax, self.gradient == "mad", dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        dtype = x.dtype
        xf = x.float()
        if self.training or not bool(self.initialized) or self.role == "weight":
            self.observe(xf)
        return self._quantize(xf).to(dtype)


class RangeQuantizer(FakeQuantize):
    """Ranges from statistics: ``minmax``, ``percentile``, ``mse`` (grid search) or ``octav`` (OCTAV eq. 6).

    Weight ranges are recomputed whenever the weight moved (its version, or any optimizer step); activation
    ranges follow an EMA of per-batch estimates in training, agreed across data-parallel ranks, used in eval.
    """

    estimators = ("minmax", "percentile", "mse", "octav")

    def __init__(self, bits: int, estimator: str = "minmax", *args, **kwargs):
        super().__init__(bits, estimator, *args, **kwargs)
        n = self.rows
        if self.mode == "asymmetric":
            self.register_buffer("range_min", torch.zeros(n))
            self.register_buffer("range_max", torch.ones(n))
        else:
            self.register_buffer("clip", torch.ones(n))
        self._cache_key = None

    def _estimate_clip(self, x: torch.Tensor) -> torch.Tensor:
        data = x if self.mode == "symmetric" else x.clamp_min(0)
        divisor = self._steps_per_clip()
        if self.estimator == "minmax":
            return estimators.absmax_clip(data, self.channel_dim)
        if self.estimator == "percentile":
            return estimators.percentile_clip(data, self.percentile, self.channel_dim)
        if self.estimator == "mse":
            return estimators.mse_clip(data, divisor, self.mode == "symmetric", self.channel_dim)
        init = self.clip if bool(self.initialized) else None
        return estimators.octav_clip(data, self.bits, self.channel_dim, init=init,
                                     noise_coefficient=1.0 / (12.0 * divisor**2))

    @torch.no_grad()
    def _update_range(self, x: torch.Tensor) -> None:
        if self.mode == "asymmetric":
            lo, hi = estimators.minmax_range(x, self.channel_dim)
            new = (lo.reshape(-1), hi.reshape(-1))
            old = (self.range_min, self.range_max)
        else:
            new = (self._estimate_clip(x).reshape(-1),)
            old = (self.clip,)
        if self.role == "act":
            new = _agree_across_ranks(new, asymmetric=self.mode == "asymmetric")
        if not all(bool(torch.isfinite(v).all()) for v in new):  # agreed first, so every rank skips together
            self._skip_nonfinite("input")
            return
        weight = 1.0 if (self.role == "weight" or not bool(self.initialized)) else self.momentum
        for buffer, value in zip(old, new, strict=True):
            buffer.mul_(1 - weight).add_(value.to(buffer.dtype) * weight)
        self.initialized.fill_(True)

    def _weight_cache_key(self, x: torch.Tensor):
        return (x.data_ptr(), x._version, _optimizer_steps, self.bits, int(self.grid))

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        if self.role == "weight":
            key = self._weight_cache_key(x)
            if key != self._cache_key or not bool(self.initialized):
                self._update_range(x)
                self._cache_key = key
        elif self.training or not bool(self.initialized):
            self._update_range(x)

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qmin, qmax = self.code_range()
        if self.mode == "asymmetric":
            lo, hi = self._shape(x, self.range_min), self._shape(x, self.range_max)
            scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-12)
            zero = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
        else:
            scale = (self._shape(x, self.clip) / self._steps_per_clip()).clamp_min(1e-12)
            zero = torch.zeros((), device=x.device)
        return self._scale(scale), zero


class LSQQuantizer(FakeQuantize):
    """A learned step: ``lsq`` (Esser et al. 2020, eq. 1-3, gradient scale ``g = 1/sqrt(N * Q_P)``) or ``lsq+``
    (Bhalgat et al. 2020: LSQ with a learned offset, on an affine grid)."""

    estimators = ("lsq", "lsq+")
    learned = True

    def __init__(self, bits: int, estimator: str = "lsq", *args, **kwargs):
        super().__init__(bits, estimator, *args, **kwargs)
        n = self.rows
        self.step = nn.Parameter(torch.ones(n))
        if estimator == "lsq+":
            self.offset = nn.Parameter(torch.zeros(n))

    def _mode_for(self, mode: str) -> str:
        return "asymmetric" if self.estimator == "lsq+" else mode

    @torch.no_grad()
    def _init_step(self, x: torch.Tensor) -> None:
        if not bool(torch.isfinite(x).all()):
            self._skip_nonfinite("input")
            return
        qmin, qmax = self.code_range()
        if self.estimator == "lsq":
            # LSQ's init: 2 E|x| / sqrt(Q_P), per channel for weights
            rows = estimators._per_channel(x, self.channel_dim).abs().mean(dim=1)
            self.step.copy_((2 * rows / math.sqrt(max(qmax, 1))).clamp_min(1e-8).reshape(self.step.shape))
        else:
            lo, hi = estimators.minmax_range(x, self.channel_dim)
            self.step.copy_(((hi - lo) / (qmax - qmin)).clamp_min(1e-8).reshape(self.step.shape))
            self.offset.copy_(lo.reshape(self.offset.shape))
        self.initialized.fill_(True)

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        if not bool(self.initialized):
            self._init_step(x)

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qmin, qmax = self.code_range()
        if self.estimator == "lsq":
            n = x.numel() / (x.shape[self.channel_dim] if self.channel_dim is not None else 1)
            if self.role == "act":
                n = x[0].numel() if x.dim() > 1 else x.numel()  # LSQ: N is the number of features
            step = scale_grad(self.step, 1.0 / math.sqrt(n * max(qmax, 1)))
            # |s|, floored: an optimizer step can push s through zero (Adam moves it by ~lr whatever its size)
            scale = self._shape(x, step.abs().clamp_min(1e-8))
            zero = torch.zeros((), device=x.device)
        else:
            n = x[0].numel() if (self.role == "act" and x.dim() > 1) else x.numel()
            factor = 1.0 / math.sqrt(n * max(qmax, 1))
            scale = self._shape(x, scale_grad(self.step, factor).abs().clamp_min(1e-8))
            zero = round_ste(qmin - self._shape(x, scale_grad(self.offset, factor)) / scale)
        return self._scale(scale), zero

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.code_range()
        scale, zero = self.qparams(x)
        # Values beyond the grid get LSQ's constant step gradient whatever their size; bounding them first
        # (detached, one step past each end) keeps an inf input from making d/ds = 0 * inf = NaN.
        bound = (scale * (torch.as_tensor(qmax, device=x.device) - zero + 1)).detach()
        low = (scale * (torch.as_tensor(qmin, device=x.device) - zero - 1)).detach()
        x = torch.minimum(torch.maximum(x, low), bound)
        # clamp before rounding: LSQ's inside/outside test is on x/s, not on the rounded value
        codes = round_ste(torch.clamp(x * scale.reciprocal() + zero, qmin, qmax))
        return (codes - zero) * scale


class PACTQuantizer(FakeQuantize):
    """PACT (Choi et al. 2018, eq. 1-3): a learned activation clip ``alpha``, gradient through the clip."""

    estimators = ("pact",)
    learned = True

    def __init__(self, bits: int, estimator: str = "pact", *args, **kwargs):
        super().__init__(bits, estimator, *args, **kwargs)
        if self.role != "act":
            raise ValueError("estimator='pact' learns an activation clip; use lsq or octav for weights")
        n = self.rows
        self.alpha = nn.Parameter(torch.ones(n))

    @torch.no_grad()
    def _init_alpha(self, x: torch.Tensor) -> None:
        if not bool(torch.isfinite(x).all()):
            self._skip_nonfinite("input")
            return
        data = x if self.mode == "symmetric" else x.clamp_min(0)
        self.alpha.copy_(estimators.absmax_clip(data, self.channel_dim).clamp_min(1e-8).reshape(self.alpha.shape))
        self.initialized.fill_(True)

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        if not bool(self.initialized):
            self._init_alpha(x)

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self._shape(x, self.alpha.abs().clamp_min(1e-8).detach()) / self._steps_per_clip()
        return self._scale(scale), torch.zeros((), device=x.device)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.code_range()
        alpha = self._shape(x, self.alpha.abs())
        clipped = torch.minimum(x, alpha)
        clipped = torch.maximum(clipped, -alpha) if self.mode == "symmetric" else clipped.clamp_min(0)
        scale, _ = self.qparams(x)
        dim = self.channel_dim if scale.dim() else None
        quantized = kernels.fake_quantize(clipped.detach(), scale.reshape(-1), 0.0, qmin, qmax, dim)
        return clipped + (quantized - clipped).detach()


class DoReFaQuantizer(FakeQuantize):
    """DoReFa weights (Zhou et al. 2016, eq. 9): ``2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``, scaled
    by ``max|w|``. The ``max|w|`` factor (detached) is our deviation, so converting a trained layer keeps its
    scale."""

    estimators = ("dorefa",)

    def __init__(self, bits: int, estimator: str = "dorefa", *args, **kwargs):
        super().__init__(bits, estimator, *args, **kwargs)
        if self.role != "weight":
            raise ValueError("estimator='dorefa' quantizes weights; use pact, lsq or minmax for activations")

    def _mode_for(self, mode: str) -> str:
        return "symmetric"

    def _unit(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        squashed = torch.tanh(w)
        peak = squashed.abs().amax().clamp_min(1e-12)
        return squashed / (2 * peak) + 0.5, w.detach().abs().amax().clamp_min(1e-12)

    def integer_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            levels = 2**self.bits - 1
            unit, magnitude = self._unit(x.float())
            return torch.round(unit * levels), 2 * magnitude / levels, torch.tensor(levels / 2.0, device=x.device)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        unit, magnitude = self._unit(x)
        return (2 * round_ste(unit * levels) / levels - 1) * magnitude
