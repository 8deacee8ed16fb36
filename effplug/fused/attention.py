"""Eager attention with effplug's scaled masked softmax + dropout, for every HF family that dispatches
attention through ``AttentionInterface`` (BERT, RoBERTa, GPT-2, Llama, Qwen2/3, Mistral in transformers 5).

The patch registers ``effplug_fused_eager`` as an attention implementation (and HF's eager mask for it) and
switches a model built with ``attn_implementation="eager"`` to it. SDPA and flash attention are already one
fused kernel each, so a model using them is left as it is and told so once.
"""

from __future__ import annotations

import logging
import sys

import torch
from torch import nn

from effplug.kernels.bias_dropout_residual import DropoutSeeds
from effplug.kernels.softmax import scaled_masked_softmax
from effplug.logs import log_once

log = logging.getLogger("effplug.fused")

IMPLEMENTATION = "effplug_fused_eager"


# keywords HF passes that do not change the math here (the mask already holds causality and sliding windows)
NO_MATH = frozenset({"position_ids", "use_cache", "sliding_window", "is_causal", "output_attentions",
                     "cache_position", "past_key_values", "past_key_value"})


def _model_eager_attention(module: nn.Module, unknown: list[str]):
    """The module's own family eager function, for keywords the fused one does not implement (said once)."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise NotImplementedError(f"effplug's fused attention does not implement {', '.join(unknown)} for "
                                  f"{type(module).__name__}, and its module has no eager_attention_forward to fall "
                                  "back to; call apply_fused_kernels(..., softmax=False)")
    log_once(log, f"attention:{type(module).__name__}:{unknown}",
             "effplug.fused: softmax left %s unfused: HF passes %s, which the fused attention does not implement; "
             "it runs its family's eager attention", type(module).__name__, ", ".join(unknown))
    return eager


def fused_eager_attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                          position_bias=None, **kwargs):
    """HF's eager attention (``softmax(QKᵀ·scaling + position_bias + mask)`` with dropout, then ·V), the softmax
    fused. T5's learned ``position_bias`` is added to the scores outside the kernel, so its gradient flows;
    any other keyword that carries math runs the family's own eager function instead."""
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in NO_MATH)
    if unknown:
        return _model_eager_attention(module, unknown)(module, query, key, value, attention_mask, scaling=scaling,
                                                       dropout=dropout, position_bias=position_bias, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves ``groups`` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    mask = attention_mask
    if mask is not None and mask.shape[-1] != key.shape[-2]:
        mask = mask[..., :key.shape[-2]]
    p = dropout if module.training else 0.0
    seeds = getattr(module, "fused_softmax_dropout", None)
    if p > 0 and seeds is None:
        seeds = module.fused_softmax_dropout = DropoutSeeds().to(query.device)
    scores = torch.matmul(query, key.transpose(2, 3))
    if position_bias is not None:  # learned (T5): added here so autograd carries its gradient
        scores, scaling = scores * scaling + position_bias, 1.0
    probs = scaled_masked_softmax(scores, scaling, mask, p, seeds.next_seed() if p > 0 else 0,
                                  out_dtype=query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _is_attention(module: nn.Module) -> bool:
    """HF's attention classes: the innermost ``*Attention`` (BERT's ``BertSelfAttention`` inside ``BertAttention``)
    is the one that calls the attention function."""
    return type(module).__name__.endswith("Attention")


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, fused_eager_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


def patch_softmax(model: nn.Module, seed: int | None = None) -> list[str]:
    """Switch every eager-attention HF model inside ``model`` to the fused softmax; returns the attention
    modules that now run it."""
    patched = []
    for _, hf_model in list(model.named_modules()):
        config = getattr(hf_model, "config", None)
        if not hasattr(hf_model, "set_attn_implementation") or config is None:
            continue
        current = getattr(config, "_attn_implementation", None)
        if current == IMPLEMENTATION:
            continue
        if current != "eager":
            log_once(log, f"softmax:{current}", "effplug.fused: softmax left %s's %s attention as it is: it is "
                     "already one fused kernel; build the model with attn_implementation='eager' to use effplug's "
                     "scaled masked softmax", type(hf_model).__name__, current)
            continue
        _register()
        hf_model.set_attn_implementation(IMPLEMENTATION)
        for name, module in hf_model.named_modules():
            if _is_attention(module) and not any(_is_attention(child) for child in module.children()):
                module.fused_softmax_dropout = DropoutSeeds(seed)
                patched.append(name)
    return patched
