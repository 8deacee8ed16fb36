"""Llama, Qwen2, Qwen3 and Mistral: the rotary embedding in each patched attention module runs
``effplug.kernels.rope.rotary_embedding`` in place.

HF's attention calls its modeling module's global ``apply_rotary_pos_emb``, so a per-instance patch has to go
through that name: it is replaced once per module by a dispatcher that runs the fused op only while a patched
attention module's forward is on the stack, and HF's own function otherwise. Models that were not patched,
in the same process, compute exactly what they did.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import types

from torch import nn

from effplug.kernels.rope import rotary_embedding

ATTENTIONS = {"LlamaAttention": "llama", "Qwen2Attention": "qwen2", "Qwen3Attention": "qwen3",
              "MistralAttention": "mistral"}
_inside_patched = contextvars.ContextVar("effplug_fused_rope", default=False)


def _install_dispatcher(family: str) -> None:
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    original = modeling.apply_rotary_pos_emb
    if getattr(original, "_effplug_dispatcher", False):
        return

    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if not _inside_patched.get() or args or set(kwargs) - {"unsqueeze_dim"}:
            return original(q, k, cos, sin, *args, **kwargs)
        return rotary_embedding(q, k, cos, sin, kwargs.get("unsqueeze_dim", 1), inplace=True)

    apply_rotary_pos_emb._effplug_dispatcher = True
    modeling.apply_rotary_pos_emb = apply_rotary_pos_emb


def _attention_forward(self, *args, **kwargs):
    token = _inside_patched.set(True)
    try:
        return self._effplug_unfused_rope_forward(*args, **kwargs)
    finally:
        _inside_patched.reset(token)


def patch_rope(model: nn.Module) -> list[str]:
    """Every Llama/Qwen2/Qwen3/Mistral attention module rotates q and k with the fused op."""
    patched = []
    for name, module in model.named_modules():
        family = ATTENTIONS.get(type(module).__name__)
        if family is None or hasattr(module, "_effplug_unfused_rope_forward"):
            continue
        _install_dispatcher(family)
        module._effplug_unfused_rope_forward = module.forward
        module.forward = types.MethodType(functools.wraps(type(module).forward)(_attention_forward), module)
        patched.append(name)
    return patched
