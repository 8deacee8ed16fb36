"""``quantize_model``: swap quantizable layers for fake-quantized ones, by the rules of a backend preset."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from torch import nn

from effplug.quant.config import QATConfig
from effplug.quant.fake_quant import FakeQuantize
from effplug.quant.modules import QuantEmbedding, QuantMixin, quant_class_for
from effplug.quant.nested import NestedWeightQuantizer, prepare_width_statistics

log = logging.getLogger("effplug.quant")


@dataclass(frozen=True)
class LayerPlan:
    name: str
    kind: str
    weight_bits: int
    act_bits: int | None
    edge: bool = False  # first or last layer: fixed bits, also under once-QAT


def _matches(name: str, patterns) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


def plan_layers(model: nn.Module, config: QATConfig) -> tuple[list[LayerPlan], list[tuple[str, str]]]:
    """Which layers get which bits, and which are left in floating point (with the reason)."""
    candidates, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, QuantMixin):
            skipped.append((name, "already quantized"))
            continue
        cls = quant_class_for(module)
        if cls is None:
            continue
        if cls is QuantEmbedding and not config.quantize_embeddings:
            continue
        pattern = _matches(name, config.exclude)
        if pattern is not None:
            skipped.append((name, f"excluded by {pattern!r}"))
            continue
        candidates.append((name, module))
    compute = [name for name, m in candidates if quant_class_for(m) is not QuantEmbedding]
    edges = {compute[0], compute[-1]} if (compute and config.first_last_bits is not None) else set()
    plans = []
    for name, module in candidates:
        is_embedding = quant_class_for(module) is QuantEmbedding
        w_bits, a_bits = config.weight_bits, None if is_embedding else config.act_bits
        if name in edges:
            w_bits, a_bits = config.first_last_bits, (None if a_bits is None else config.first_last_bits)
        pattern = _matches(name, config.bits)
        if pattern is not None:
            value = config.bits[pattern]
            w_bits, a_bits = value if isinstance(value, (tuple, list)) else (value, None if is_embedding else value)
            if is_embedding:
                a_bits = None
        plans.append(LayerPlan(name, type(module).__name__, w_bits, a_bits, name in edges))
    return plans, skipped


def _weight_quantizer(config: QATConfig, module: nn.Module, bits: int, channel_dim: int, nested: bool):
    preset = config.preset
    per_channel = config.weight_per_channel
    channels = module.weight.shape[channel_dim]
    dim = channel_dim if per_channel else None
    if nested:
        return NestedWeightQuantizer(config.bit_widths, dim, channels)
    mode = "symmetric" if preset.weight_symmetric else "asymmetric"
    estimator = _affine_estimator(config.weight_estimator, mode, config.backend)
    return FakeQuantize(bits, estimator, "weight", mode, dim, channels, config.resolved_weight_gradient,
                        restricted=(config.backend == "tensorrt"), power_of_two=preset.power_of_two_scale)


_SYMMETRIC_ONLY = {"octav": "minmax", "mse": "minmax", "percentile": "minmax", "lsq": "lsq+"}
_reported: set = set()


def _affine_estimator(estimator: str, mode: str, backend: str) -> str:
    """Clip estimators are defined for symmetric grids; an affine (asymmetric) grid uses their affine peer."""
    if mode != "asymmetric" or estimator not in _SYMMETRIC_ONLY:
        return estimator
    replacement = _SYMMETRIC_ONLY[estimator]
    if (estimator, backend) not in _reported:
        _reported.add((estimator, backend))
        log.warning("effplug.quant: backend=%r uses asymmetric (affine) ranges here; estimator %r is defined for "
                    "symmetric grids, so %r is used instead", backend, estimator, replacement)
    return replacement


def _act_quantizer(config: QATConfig, bits: int):
    preset = config.preset
    estimator = _affine_estimator(config.act_estimator, preset.act_mode, config.backend)
    return FakeQuantize(bits, estimator, "act", preset.act_mode, None, 1, config.resolved_act_gradient,
                        restricted=(config.backend == "tensorrt"), power_of_two=preset.power_of_two_scale,
                        reduce_range=preset.act_reduce_range, momentum=config.act_momentum,
                        percentile=config.percentile)


def quantize_model(model: nn.Module, config: QATConfig | None = None, **kwargs) -> nn.Module:
    """Swap ``nn.Linear``, ``nn.Conv1d/2d``, HF ``Conv1D`` (and ``nn.Embedding`` if asked) in place.

    ``quantize_model(model, QATConfig(weight_bits=4, act_bits=4, weight_estimator="lsq"))``. Parameters are
    shared, not copied: build the optimizer after this call (Lightning and HF doors do) and it covers the
    weights plus any learned step sizes. Returns ``model``.
    """
    if config is None:
        config = QATConfig(**kwargs)
    elif kwargs:
        raise ValueError("pass either a QATConfig or keyword settings, not both")
    if not isinstance(model, nn.Module):
        raise ValueError(f"quantize_model needs an nn.Module; got {type(model).__name__}")
    plans, skipped = plan_layers(model, config)
    if not plans and not skipped:
        raise ValueError("no quantizable layers (nn.Linear, nn.Conv1d/2d, HF Conv1D) were found in the model")
    def build(plan, module, cls):
        nested = config.bit_widths is not None and cls is not QuantEmbedding and not plan.edge
        weight_quant = _weight_quantizer(config, module, plan.weight_bits, cls.weight_channel_dim, nested)
        act_quant = _act_quantizer(config, plan.act_bits) if plan.act_bits is not None else None
        return weight_quant, act_quant

    replace_layers(model, plans, build)
    if config.bit_widths is not None:
        prepare_width_statistics(model, config.bit_widths)
    for name, reason in skipped:
        log.info("effplug.quant: %s stays in floating point (%s)", name or "<root>", reason)
    model._effplug_qat_plan = plans
    return model


def replace_layers(model: nn.Module, plans: list[LayerPlan], build) -> None:
    """Swap each planned layer for its quantized class; ``build(plan, module, cls)`` gives the quantizers."""
    modules = dict(model.named_modules())
    for plan in plans:
        module = modules[plan.name]
        cls = quant_class_for(module)
        weight_quant, act_quant = build(plan, module, cls)
        quantized = cls.from_float(module, weight_quant, act_quant)
        quantized.to(module.weight.device)
        parent_name, _, child = plan.name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, quantized)


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantMixin)}


def set_quantization_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn every fake quantizer on or off (off: the float model, e.g. for a high-precision phase)."""
    for m in model.modules():
        if isinstance(m, (FakeQuantize, NestedWeightQuantizer)):
            m.enabled = enabled
    return model


def summary_table(model: nn.Module) -> str:
    rows = ["| layer | type | weight bits | activation bits | weight quantizer | activation quantizer |",
            "|---|---|---|---|---|---|"]
    for name, m in quantized_layers(model).items():
        a = m.act_quant
        rows.append(f"| {name} | {m.float_class.__name__} | {m.weight_quant.bits} | {a.bits if a else '-'} | "
                    f"{m.weight_quant.extra_repr()} | {a.extra_repr() if a else '-'} |")
    return "\n".join(rows)
