"""LUQ: 4-bit forward and backward training (Chmiel, Banner, Hoffer, Ben-Yaacov, Soudry, ICLR 2023,
"Accurate Neural Training with 4-bit Matrix Multiplications at Standard Formats", arXiv:2112.10769).

- **Forward** (sec. 5): weights and layer inputs on INT4 grids with SAWB clipping (Choi et al. 2018),
  ``clip = c1 sqrt(E[x^2]) - c2 E|x|`` with LUQ's 4-bit coefficients ``c1 = 12.1, c2 = 12.2``; signed codes
  ``[-8, 7]`` (unsigned ``[0, 15]`` for non-negative inputs), straight-through gradient inside the clip.
- **Backward** (sec. 4, eqs. 9-11): each quantized layer's neural gradient (``grad_output``) goes through
  ``effplug.kernels.log_quantize``: radix-2, 1 sign + 3 exponent bits, underflow threshold
  ``alpha = max|g| / 2^7``, stochastic underflow pruning below it and unbiased stochastic rounding between
  neighbouring powers of two; both GEMMs of the backward pass use the quantized gradient.
- **SMP** (sec. 6): the mean of ``smp`` independent draws, cutting the variance by ``smp``.
- **FNT**: ``set_luq_enabled(model, False)`` runs the model in full precision (the final fine-tune phase).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from effplug.codecs import SeedStream
from effplug.codecs.log import LogCodec
from effplug.kernels.philox import SEED_LIMIT, resolve_seed
from effplug.options import build_config, checks_keywords, name_patterns
from effplug.quant.convert import LayerPlan, replace_layers, select_compute_layers
from effplug.quant.coverage import report_coverage
from effplug.quant.quantizer import Quantizer, set_quantizers_enabled
from effplug.quant.ste import round_ste

SAWB_4BIT = (12.1, 12.2)


@checks_keywords
@dataclass(frozen=True)
class LUQConfig:
    """``bits`` of the forward INT grid and of the gradient format (4 in the paper); ``smp`` samples per
    gradient; ``exclude`` fnmatch names left in float; ``keep_first_last`` leaves the first and last layers
    in float (the paper quantizes every layer: default False); ``seed`` for the stochastic rounding."""

    bits: int = 4
    smp: int = 1
    exclude: tuple = ()
    keep_first_last: bool = False
    seed: int | None = 0

    def __post_init__(self):
        if self.bits != 4:
            raise ValueError(f"bits={self.bits!r} is not supported; LUQ's SAWB coefficients and radix-2 gradient "
                             "format are defined for 4 bits: use bits=4")
        if isinstance(self.smp, bool) or not isinstance(self.smp, int) or self.smp < 1:
            raise ValueError(f"smp={self.smp!r} must be a positive integer (samples averaged per gradient)")
        object.__setattr__(self, "exclude", name_patterns(self.exclude))


def sawb_clip(x: torch.Tensor, coefficients: tuple = SAWB_4BIT) -> torch.Tensor:
    """SAWB's clip ``c1 sqrt(E[x^2]) - c2 E|x|``.

    SAWB's coefficients are fitted to zero-mean bell-shaped data, where the clip is ~3x E|x|. On data far
    from that (pooled positive features: ``sqrt(E[x^2]) ~ E|x|``) the formula goes to zero or below and
    would clip everything; when it falls under ``E|x|`` we use ``max|x|`` instead (our deviation).
    """
    xf = x.detach().float()
    c1, c2 = coefficients
    mean_abs = xf.abs().mean()
    clip = c1 * xf.pow(2).mean().sqrt() - c2 * mean_abs
    return torch.where(clip < mean_abs, xf.abs().amax(), clip).clamp_min(1e-12)


class SAWBQuantizer(Quantizer):
    """INT4 fake quantization with SAWB's clip, recomputed from every tensor; STE inside the clip."""

    def __init__(self, role: str):
        super().__init__()
        self.role, self.bits = role, 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        clip = sawb_clip(x)
        unsigned = self.role == "act" and bool((x >= 0).all())
        qmin, qmax = (0, 15) if unsigned else (-8, 7)
        scale = clip / (qmax if unsigned else 8)
        v = torch.clamp(x.float() / scale, qmin, qmax)
        return (round_ste(v) * scale).to(x.dtype)


GRADIENT_CODEC = LogCodec(4)  # LUQ's radix-2 format: 1 sign + 3 exponent bits


class _LogQuantizeGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, smp, seeds):
        ctx.smp, ctx.seeds = smp, seeds
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if not torch.isfinite(grad).all():
            return grad, None, None  # leave a non-finite gradient for the loss scaler / anomaly checks to see
        samples = [GRADIENT_CODEC.roundtrip(grad.contiguous(), ctx.seeds.draw()) for _ in range(ctx.smp)]
        return torch.stack(samples).mean(0) if ctx.smp > 1 else samples[0], None, None


class _BufferSeeds:
    """A seed stream whose position is a layer's int64 buffer ``luq_seed``: it rides in every checkpoint
    (Lightning, HF, DeepSpeed) with the model's own state, so a resume continues the same draws."""

    def __init__(self, position: torch.Tensor):
        self.position = position

    def draw(self) -> int:
        seed = int(self.position)
        self.position.fill_((seed + 1) % SEED_LIMIT)
        return seed


class GradientQuantizer:
    """Forward hook that routes a layer's output gradient through LUQ's quantizer, seeded from the layer's
    own ``luq_seed`` buffer (one stream per layer, so the draws do not depend on the backward order)."""

    def __init__(self, smp: int):
        self.smp, self.enabled = smp, True

    def __call__(self, module, args, output):
        if self.enabled and torch.is_tensor(output) and output.requires_grad:
            return _LogQuantizeGradient.apply(output, self.smp, _BufferSeeds(module.luq_seed))
        return None


def _layer_seed(base: int, name: str) -> int:
    """Independent per-layer streams from one seed: the layer's spawn of the seed's stream."""
    return SeedStream(base).spawn(name).seed


def prepare_luq(model: nn.Module, config: LUQConfig | None = None, persistent_seeds: bool = True,
                **kwargs) -> nn.Module:
    """Swap Linear/Conv layers for INT4-forward, LUQ-backward versions in place; returns ``model``.

    Each converted layer's seed position is its int64 buffer ``luq_seed``: in the model's ``state_dict``
    (HF, DeepSpeed and plain checkpoints carry it) unless ``persistent_seeds=False``, for frameworks that load
    weights before converting (Lightning: ``LUQPrecision`` checkpoints :func:`luq_state_dict` instead).
    """
    config = build_config(LUQConfig, "prepare_luq", config, **kwargs)
    names, left = select_compute_layers(model, config.exclude, config.keep_first_last, "LUQ")
    if not names:
        raise ValueError("no layers to quantize for LUQ: nn.Linear, nn.Conv1d/2d or HF Conv1D needed")
    replace_layers(model, [LayerPlan(n, "", 4, 4) for n in names],
                   lambda plan, module, cls: (SAWBQuantizer("weight"), SAWBQuantizer("act")))
    model._effplug_coverage = report_coverage(model, "LUQ", names, left)
    base = resolve_seed(config.seed)
    for n in names:
        layer = model.get_submodule(n)
        layer.register_buffer("luq_seed", torch.tensor(_layer_seed(base, n), dtype=torch.int64),
                              persistent=persistent_seeds)
        layer.gradient_quantizer = GradientQuantizer(config.smp)
        layer.register_forward_hook(layer.gradient_quantizer)
    return model


def luq_state_dict(model: nn.Module) -> dict:
    """``{layer name: seed position}`` of every LUQ layer (plain ints)."""
    return {name: int(m.luq_seed) for name, m in model.named_modules() if isinstance(getattr(m, "luq_seed", None),
                                                                                    torch.Tensor)}


def load_luq_state_dict(model: nn.Module, state: dict) -> None:
    """Restore :func:`luq_state_dict`; a layer missing from either side is an error naming it."""
    current = luq_state_dict(model)
    if set(current) != set(state):
        raise ValueError(f"LUQ state names layers {sorted(state)} but this model's LUQ layers are {sorted(current)}; "
                         "resume with the same model and LUQ settings")
    for name, position in state.items():
        model.get_submodule(name).luq_seed.fill_(int(position))


def set_luq_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn LUQ's forward and backward quantization on or off (off: the high-precision fine-tune phase)."""
    set_quantizers_enabled(model, enabled, (SAWBQuantizer,))
    for m in model.modules():
        if isinstance(getattr(m, "gradient_quantizer", None), GradientQuantizer):
            m.gradient_quantizer.enabled = enabled
    return model
