"""``quantize_model``: swap quantizable layers for fake-quantized ones, by the rules of a backend preset."""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass

from torch import nn

from effplug.logs import log_once
from effplug.options import build_config, name_patterns, require_module
from effplug.quant.config import QATConfig
from effplug.quant.coverage import report_coverage
from effplug.quant.fake_quantizer import FakeQuantize
from effplug.quant.modules import (
    QuantEmbedding,
    QuantLinear,
    QuantMixin,
    QuantMultiheadAttention,
    attention_class_for,
    quant_class_for,
)
from effplug.quant.nested import NestedWeightQuantizer, prepare_width_statistics
from effplug.quant.quantizer import set_quantizers_enabled

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


def qat_class_for(module: nn.Module):
    """The QAT class replacing ``module``: the shared layer classes plus ``nn.MultiheadAttention``."""
    return quant_class_for(module) or attention_class_for(module)


def plan_layers(model: nn.Module, config: QATConfig) -> tuple[list[LayerPlan], list[tuple[str, str]]]:
    """Which layers get which bits, and which are left in floating point (with the reason)."""
    candidates, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, QuantMixin):
            skipped.append((name, "already quantized"))
            continue
        cls = qat_class_for(module)
        if cls is None:
            continue
        if cls is QuantEmbedding and not config.quantize_embeddings:
            skipped.append((name, "embedding; quantize_embeddings=True quantizes it"))
            continue
        pattern = _matches(name, config.exclude)
        if pattern is not None:
            skipped.append((name, f"excluded by {pattern!r}"))
            continue
        candidates.append((name, module))
    compute = [name for name, m in candidates if qat_class_for(m) is not QuantEmbedding]
    edges = {compute[0], compute[-1]} if (compute and config.first_last_bits is not None) else set()
    if edges and len(compute) <= 2 and config.first_last_bits != config.weight_bits:
        # every layer is "first" or "last": the rule would silently run the whole model at first_last_bits
        log.warning("effplug.quant: the model has %d quantizable layer(s), all first or last, so "
                    "first_last_bits=%s would replace weight_bits=%s everywhere; weight_bits is used for all of "
                    "them. Pass first_last_bits=None to silence this, or exclude=[...] to keep one in float.",
                    len(compute), config.first_last_bits, config.weight_bits)
        edges = set()
    plans = []
    for name, module in candidates:
        is_embedding = qat_class_for(module) is QuantEmbedding
        w_bits, a_bits = config.weight_bits, None if is_embedding else config.act_bits
        if name in edges:
            w_bits, a_bits = config.first_last_bits, (None if a_bits is None else config.first_last_bits)
        pattern = _matches(name, config.bits) if isinstance(config.bits, dict) else None
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
    dim = channel_dim if per_channel else None
    channels = float_weight(module).shape[channel_dim]
    if nested:
        return NestedWeightQuantizer(config.bit_widths, dim, channels)
    mode = "symmetric" if preset.weight_symmetric else "asymmetric"
    estimator = _affine_estimator(config.weight_estimator, mode, config.backend)
    return FakeQuantize(bits, estimator, "weight", mode, dim, channels, config.resolved_weight_gradient,
                        restricted=(config.backend == "tensorrt"), power_of_two=preset.power_of_two_scale)


_SYMMETRIC_ONLY = {"octav": "minmax", "mse": "minmax", "percentile": "minmax", "lsq": "lsq+"}


def _affine_estimator(estimator: str, mode: str, backend: str) -> str:
    """Clip estimators are defined for symmetric grids; an affine (asymmetric) grid uses their affine peer."""
    if mode != "asymmetric" or estimator not in _SYMMETRIC_ONLY:
        return estimator
    replacement = _SYMMETRIC_ONLY[estimator]
    log_once(log, f"affine-estimator:{estimator}:{backend}",
             "effplug.quant: backend=%r uses asymmetric (affine) ranges here; estimator %r is defined for "
             "symmetric grids, so %r is used instead", backend, estimator, replacement)
    return replacement


def _act_quantizer(config: QATConfig, bits: int):
    preset = config.preset
    estimator = _affine_estimator(config.act_estimator, preset.act_mode, config.backend)
    return FakeQuantize(bits, estimator, "act", preset.act_mode, None, 1, config.resolved_act_gradient,
                        restricted=(config.backend == "tensorrt"), power_of_two=preset.power_of_two_scale,
                        reduce_range=preset.act_reduce_range, momentum=config.act_momentum,
                        percentile=config.percentile)


def quantize_model(model: nn.Module, config: QATConfig | None = None, sensitivity_losses=None,
                   **kwargs) -> nn.Module:
    """Swap ``nn.Linear``, ``nn.Conv1d/2d``, HF ``Conv1D`` (and ``nn.Embedding`` if asked) in place.

    ``quantize_model(model, QATConfig(weight_bits=4, act_bits=4, weight_estimator="lsq"))``. Parameters are
    shared, not copied: build the optimizer after this call (Lightning and HF doors do) and it covers the
    weights plus any learned step sizes. Returns ``model`` (a new module when ``model`` itself is one layer,
    such as a bare ``nn.Linear``: use the return value). Logs one coverage line (``model._effplug_coverage``).

    With ``bits="auto"``, ``sensitivity_losses`` (zero-argument closures, each the float model's loss on one
    calibration batch) drive the bit search; its result is ``model._effplug_bit_search``.
    """
    config = build_config(QATConfig, "quantize_model", config, **kwargs)
    search = None
    if config.bits == "auto":
        if not sensitivity_losses:
            raise ValueError("QATConfig(bits='auto') chooses bits from each layer's loss sensitivity, so it needs "
                             "calibration data: quantize_model(model, config, sensitivity_losses=[lambda: "
                             "loss_fn(model(x), y)]); the Lightning callback and EffTrainer pass training batches")
        from effplug.quant.bit_search import search_bits

        search = search_bits(model, config, list(sensitivity_losses))
        log.info("effplug.quant: bits='auto' chose %.3f average weight bits (budget %.3f):\n%s",
                 search.average_bits, search.budget_bits, search.table())
        config = searched_config(model, config, search)
    if not isinstance(model, nn.Module):
        raise ValueError(f"quantize_model needs an nn.Module; got {type(model).__name__}")
    if quantized_layers(model):
        previous = getattr(model, "_effplug_qat_config", None)
        if previous is None or previous == config:
            log.info("effplug.quant: the model is already quantized with these settings; nothing to do")
            return model
        raise ValueError(f"the model is already quantized with {previous}; quantizing it again with {config} would "
                         "stack two conversions. Convert a fresh float model, or change widths of a once-QAT model "
                         "with effplug.quant.set_bits")
    plans, skipped = plan_layers(model, config)
    if not plans:
        raise ValueError("no quantizable layers (nn.Linear, nn.Conv1d/2d, HF Conv1D, nn.MultiheadAttention) were "
                         "found in the model" + (f"; left in float: {dict(skipped)}" if skipped else ""))

    def build(plan, module, cls):
        nested = config.bit_widths is not None and cls is not QuantEmbedding and not plan.edge
        weight_quant = _weight_quantizer(config, module, plan.weight_bits, cls.weight_channel_dim, nested)
        act_quant = _act_quantizer(config, plan.act_bits) if plan.act_bits is not None else None
        return weight_quant, act_quant

    model = replace_layers(model, plans, build)
    if config.bit_widths is not None:
        prepare_width_statistics(model, config.bit_widths)
    model._effplug_qat_plan = plans
    model._effplug_qat_config = config
    if search is not None:
        model._effplug_bit_search = search
    left = dict(skipped)
    for plan in plans:  # said in the coverage line, not left for the docs alone
        if isinstance(model.get_submodule(plan.name) if plan.name else model, QuantMultiheadAttention):
            left[f"{plan.name}.out_proj" if plan.name else "out_proj"] = (
                "weight quantized; its input, formed inside F.multi_head_attention_forward, stays float")
    model._effplug_coverage = report_coverage(model, "QAT", [p.name for p in plans], left)
    return model


def searched_config(model: nn.Module, config: QATConfig, search) -> QATConfig:
    """``config`` with ``bits="auto"`` replaced by the searched bits, one exact pattern per layer, as
    ``{name: (weight_bits, act_bits)}`` with the activation bits a uniform run of ``config`` would give."""
    uniform = dataclasses.replace(config, bits={}, budget_bits=None, budget_bytes=None)
    act = {p.name: p.act_bits for p in plan_layers(model, uniform)[0]}
    return dataclasses.replace(uniform, bits={_literal(n): (b, act[n]) for n, b in search.bits.items()})


def _literal(name: str) -> str:
    """An fnmatch pattern matching exactly ``name``."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def float_weight(module: nn.Module):
    """The weight a layer's quantizer covers (an attention block's packed q/k/v projection)."""
    return module.in_proj_weight if isinstance(module, nn.MultiheadAttention) else module.weight


def replace_layers(model: nn.Module, plans: list[LayerPlan], build) -> nn.Module:
    """Swap each planned layer for its quantized class; ``build(plan, module, cls)`` gives the quantizers.

    Returns ``model``, or its quantized replacement when ``model`` itself is the (one) layer.
    """
    modules = dict(model.named_modules())
    for plan in plans:
        module = modules[plan.name]
        cls = qat_class_for(module)
        weight_quant, act_quant = build(plan, module, cls)
        if cls is QuantMultiheadAttention:  # its output projection gets a weight quantizer of its own
            out_weight_quant, memory_quant = build(plan, module.out_proj, QuantLinear)
            quantized = cls.from_float(module, weight_quant, act_quant, out_weight_quant, memory_quant)
        else:
            quantized = cls.from_float(module, weight_quant, act_quant)
        quantized.to(float_weight(module).device)
        parent_name, _, child = plan.name.rpartition(".")
        if not plan.name:
            model = quantized
        else:
            setattr(modules[parent_name] if parent_name else model, child, quantized)
    return model


def select_compute_layers(model: nn.Module, exclude=(), keep_first_last: bool = False,
                          technique: str = "") -> tuple[list[str], dict[str, str]]:
    """Linear/Conv/HF Conv1D layers a technique converts, and what it leaves in float with the reason.

    Shared by LUQ, LNS and binarization; their conversion then logs :func:`report_coverage` with both.
    """
    require_module(model, technique or "this conversion")
    exclude = name_patterns(exclude)
    names, left = [], {}
    for name, module in model.named_modules():
        cls = quant_class_for(module)
        if isinstance(module, QuantMixin):
            left[name] = "already converted"
        elif cls is QuantEmbedding:
            left[name] = f"embedding ({technique} converts compute layers)"
        elif cls is not None:
            pattern = _matches(name, tuple(exclude))
            if pattern is None:
                names.append(name)
            else:
                left[name] = f"excluded by {pattern!r}"
    if keep_first_last and names:
        for edge in {names[0], names[-1]}:
            left[edge] = "first/last layer, keep_first_last=True"
        names = names[1:-1]
    return names, left


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantMixin)}


def set_quantization_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn every fake quantizer on or off (off: the float model, e.g. for a high-precision phase)."""
    return set_quantizers_enabled(model, enabled, (FakeQuantize, NestedWeightQuantizer))


def summary_table(model: nn.Module) -> str:
    rows = ["| layer | type | weight bits | activation bits | weight quantizer | activation quantizer |",
            "|---|---|---|---|---|---|"]
    for name, m in quantized_layers(model).items():
        a = m.act_quant
        rows.append(f"| {name} | {m.float_class.__name__} | {m.weight_quant.bits} | {a.bits if a else '-'} | "
                    f"{m.weight_quant.extra_repr()} | {a.extra_repr() if a else '-'} |")
    return "\n".join(rows)
