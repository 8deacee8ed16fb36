"""GPT-2, Llama, Qwen2, Qwen3 and Mistral: RMSNorm, SwiGLU and the fused linear cross-entropy patched into an
instantiated model's modules (its class is untouched, so other models of the family stay as they are)."""

from __future__ import annotations

import functools
import logging
import types

from torch import nn
from torch.nn import functional as F

from effplug.kernels.linear_cross_entropy import linear_cross_entropy
from effplug.kernels.rms_norm import rms_norm
from effplug.kernels.swiglu import swiglu
from effplug.logs import log_once

log = logging.getLogger("effplug.fused")

FAMILIES = ("gpt2", "llama", "qwen2", "qwen3", "mistral")
RMS_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")
GATED_MLPS = ("LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP")
CAUSAL_LMS = ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")
SILU_CLASSES = ("SiLU", "SiLUActivation")


def _modules_of(model: nn.Module, class_names: tuple[str, ...], marker: str):
    for name, module in model.named_modules():
        if type(module).__name__ in class_names and not hasattr(module, marker):
            yield name, module


def _rms_norm_forward(self, hidden_states):
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def patch_rms_norm(model: nn.Module) -> list[str]:
    """Every Llama/Qwen2/Qwen3/Mistral RMSNorm (Qwen3's q/k norms too) runs ``effplug.kernels.rms_norm``."""
    patched = []
    for name, module in _modules_of(model, RMS_NORMS, "_effplug_rms_norm"):
        module.forward = types.MethodType(_rms_norm_forward, module)
        module._effplug_rms_norm = True
        patched.append(name)
    return patched


def _swiglu_mlp_forward(self, x):
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def patch_swiglu(model: nn.Module) -> list[str]:
    """Gated MLPs whose activation is SiLU run ``down(swiglu(gate(x), up(x)))``; others are reported and kept."""
    patched = []
    for name, module in _modules_of(model, GATED_MLPS, "_effplug_swiglu"):
        act = type(getattr(module, "act_fn", None)).__name__
        if act not in SILU_CLASSES:
            log_once(log, f"swiglu:{act}", "effplug.fused: swiglu left %s unfused: its activation is %s, not SiLU",
                     name, act)
            continue
        module.forward = types.MethodType(_swiglu_mlp_forward, module)
        module._effplug_swiglu = True
        patched.append(name)
    return patched


def _fused_loss_applies(self, labels) -> bool:
    if labels is None or not self.training:
        return False  # generation and evaluation need the logits
    if type(self.lm_head) is not nn.Linear:
        log_once(log, f"cross_entropy:{type(self.lm_head).__name__}",
                 "effplug.fused: cross_entropy falls back to the unfused loss: lm_head is a %s (quantized or "
                 "wrapped), not an nn.Linear", type(self.lm_head).__name__)
        return False
    return True


def _fused_causal_lm_forward(self, *args, labels=None, **kwargs):
    if not _fused_loss_applies(self, labels):
        return self._effplug_unfused_forward(*args, labels=labels, **kwargs)
    shift_labels = kwargs.pop("shift_labels", None)
    num_items = kwargs.pop("num_items_in_batch", None)
    kwargs.pop("logits_to_keep", None)
    outputs = getattr(self, self.base_model_prefix)(*args, **kwargs)
    if shift_labels is None:  # HF's ForCausalLMLoss: position i predicts token i + 1
        shift_labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    loss = linear_cross_entropy(outputs.last_hidden_state, self.lm_head.weight, shift_labels.to(labels.device),
                                self.lm_head.bias, ignore_index=-100, label_smoothing=self._effplug_smoothing,
                                z_loss=self._effplug_z_loss, reduction="mean" if num_items is None else "sum")
    if num_items is not None:
        loss = loss / num_items
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=getattr(outputs, "past_key_values", None),
                                  hidden_states=getattr(outputs, "hidden_states", None),
                                  attentions=getattr(outputs, "attentions", None))


def patch_cross_entropy(model: nn.Module, label_smoothing: float = 0.0, z_loss: float = 0.0) -> list[str]:
    """The causal-LM head's loss, in training with labels, runs ``linear_cross_entropy``: no logits tensor.
    The output's ``logits`` is then None; evaluation and generation keep the unfused forward."""
    patched = []
    for name, module in _modules_of(model, CAUSAL_LMS, "_effplug_unfused_forward"):
        module._effplug_unfused_forward = module.forward
        module._effplug_smoothing, module._effplug_z_loss = float(label_smoothing), float(z_loss)
        # keep the class forward's signature: HF's Trainer drops dataset columns the signature does not name
        forward = functools.wraps(type(module).forward)(
            lambda self, *args, **kwargs: _fused_causal_lm_forward(self, *args, **kwargs))
        module.forward = types.MethodType(forward, module)
        patched.append(name or type(module).__name__)
    return patched
