"""GPT-2 stages (``model.transformer.h``)."""

from __future__ import annotations

import torch
from torch import nn

from effplug.parallel.pipeline.models.decoder import DecoderStage


class GPT2Stage(DecoderStage):
    def __init__(self, model, blocks: list[nn.Module], first: bool, last: bool):
        transformer = model.transformer
        super().__init__(transformer.wte, model.lm_head, blocks, first, last)
        if first:
            self.wte, self.wpe, self.drop = transformer.wte, transformer.wpe, transformer.drop
        if last:
            self.final_norm = transformer.ln_f

    def forward(self, x):
        if self.first:
            positions = torch.arange(x.shape[1], device=x.device)
            x = self.drop(self.wte(x) + self.wpe(positions))
        for block in self.blocks:
            out = block(x)
            x = out[0] if isinstance(out, tuple) else out
        return self._head(x) if self.last else x
