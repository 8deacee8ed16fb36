"""Eager attention with effplug's scaled masked softmax + dropout, for every HF family that dispatches
attention through ``AttentionInterface`` (BERT, RoBERTa, GPT-2, Llama, Qwen2/3, Mistral in transformers 5).

The patch registers ``effplug_fused_eager`` as an attention implementation (and HF's eager mask for it) and
switches a model built with ``attn_implementation="eager"`` to it. SDPA and flash attention are already one
fused kernel each, so a model using them is left as it is and told so once.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from effplug.kernels.bias_dropout_residual import DropoutSeeds
from effplug.kernels.softmax import scaled_masked_softmax
from effplug.logs import log_once

log = logging.getLogger("effplug.fused")

IMPLEMENTATION = "effplug_fused_eager"


def fused_eager_attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                          **kwargs):
    """HF's eager attention (``softmax(QKᵀ·scaling + mask)`` with dropout, then ·V), the softmax fused."""
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
    probs = scaled_masked_softmax(torch.matmul(query, key.transpose(2, 3)), scaling, mask, p,
                                  seeds.next_seed() if p > 0 else 0, out_dtype=query.dtype)
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
