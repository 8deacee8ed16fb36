"""BERT and RoBERTa: bias + dropout + residual fused into every ``*SelfOutput``/``*Output`` block."""

from __future__ import annotations

import types

from torch import nn
from torch.nn import functional as F

from effplug.kernels.bias_dropout_residual import FusedBiasDropoutResidual

# class names of the blocks ``dense -> dropout -> LayerNorm(x + residual)``, per family
BIAS_DROPOUT_RESIDUAL_BLOCKS = {"bert": ("BertSelfOutput", "BertOutput"),
                                "roberta": ("RobertaSelfOutput", "RobertaOutput")}


def _fused_output_forward(self, hidden_states, input_tensor):
    dense = self.dense
    if type(dense) is nn.Linear and dense.bias is not None:  # fold the bias into the fused pass
        hidden_states, bias = F.linear(hidden_states, dense.weight), dense.bias
    else:  # a QAT or otherwise wrapped layer keeps its own forward; dropout and residual stay fused
        hidden_states, bias = dense(hidden_states), None
    return self.LayerNorm(self.fused_bias_dropout_residual(hidden_states, bias, input_tensor))


def patch_bias_dropout_residual(model: nn.Module, seed: int | None = None) -> list[str]:
    """Replace BERT/RoBERTa output blocks' ``dropout(dense(x)) + residual`` with the fused op; returns the
    patched module names."""
    names = {n for family in BIAS_DROPOUT_RESIDUAL_BLOCKS.values() for n in family}
    patched = []
    for name, module in model.named_modules():
        if type(module).__name__ not in names or hasattr(module, "fused_bias_dropout_residual"):
            continue
        if not all(hasattr(module, a) for a in ("dense", "dropout", "LayerNorm")):
            continue
        module.fused_bias_dropout_residual = FusedBiasDropoutResidual(module.dropout.p, seed)
        module.forward = types.MethodType(_fused_output_forward, module)
        patched.append(name)
    return patched
