"""The stage base of HF decoder LMs: blocks, with the embeddings on the first stage and the head on the last."""

from __future__ import annotations

from torch import nn


def _own_head(head: nn.Linear) -> nn.Linear:
    """A copy of a head whose weight is tied to the embedding on another stage."""
    copy = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
    copy.weight = nn.Parameter(head.weight.detach().clone())
    if head.bias is not None:
        copy.bias = nn.Parameter(head.bias.detach().clone())
    return copy


class DecoderStage(nn.Module):
    """Blocks of an HF decoder LM; the first stage adds the embeddings, the last the final norm and the head.

    A tie between the embedding and the head cannot cross ranks: the last stage gets its own copy, and
    ``PipelineRunner(sync_tied=True)`` sums the two gradients so both copies take the tied update.
    """

    def __init__(self, embedding: nn.Embedding, head: nn.Linear, blocks: list[nn.Module], first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        self.blocks = nn.ModuleList(blocks)
        tied = head.weight is embedding.weight
        if last:
            self.lm_head = _own_head(head) if tied and not first else head
            if tied and not first:
                self.tied_parameter = self.lm_head.weight
        if first and not last and tied:
            self.tied_parameter = embedding.weight

    def _head(self, x):
        return self.lm_head(self.final_norm(x))
