"""Llama-style stages (``model.model.layers``: Llama, Qwen2, Mistral)."""

from __future__ import annotations

import torch
from torch import nn

from effplug.parallel.pipeline.models.decoder import DecoderStage


class LlamaStage(DecoderStage):
    """Llama-style decoders (``model.model.layers``): every stage rebuilds the rotary embeddings and the causal
    mask for its blocks, as the HF model's own forward does."""

    def __init__(self, model, blocks: list[nn.Module], first: bool, last: bool):
        inner = model.model
        super().__init__(inner.embed_tokens, model.lm_head, blocks, first, last)
        self.config = inner.config
        self.rotary_emb = inner.rotary_emb
        if first:
            self.embed_tokens = inner.embed_tokens
        if last:
            self.final_norm = inner.norm

    def forward(self, x):
        from transformers.masking_utils import create_causal_mask

        if self.first:
            x = self.embed_tokens(x)
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        mask = create_causal_mask(config=self.config, inputs_embeds=x, attention_mask=None, cache=None,
                                  position_ids=positions)
        rotary = self.rotary_emb(x, position_ids=positions)
        for block in self.blocks:
            out = block(x, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
            x = out[0] if isinstance(out, tuple) else out
        return self._head(x) if self.last else x
