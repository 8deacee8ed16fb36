"""Cutting a model into stages: ``split_sequential``, ``split_decoder`` (HF GPT-2 and Llama-style LMs), and
``StageList``, this rank's stages callable as the whole model for evaluation."""

from __future__ import annotations

from torch import nn

from effplug.parallel.pipeline.models.gpt2 import GPT2Stage
from effplug.parallel.pipeline.models.llama import LlamaStage


def balanced_split_points(sizes: list[int], num_stages: int) -> list[int]:
    """Cut indices (len ``num_stages - 1``) so each stage holds about the same number of parameters."""
    if not 2 <= num_stages <= len(sizes):
        raise ValueError(f"num_stages={num_stages}: use 2 to {len(sizes)} (one layer per stage at least)")
    total, cuts, running = sum(sizes), [], 0
    for index, size in enumerate(sizes[:-1]):
        running += size
        target = total * (len(cuts) + 1) / num_stages
        remaining_layers, remaining_cuts = len(sizes) - index - 1, num_stages - 1 - len(cuts)
        if len(cuts) < num_stages - 1 and (running >= target or remaining_layers == remaining_cuts):
            cuts.append(index + 1)
    return cuts


def _check_points(points: list[int], length: int) -> list[int]:
    points = list(points)
    if not points or points != sorted(set(points)) or points[0] <= 0 or points[-1] >= length:
        raise ValueError(f"split_points={points}: strictly increasing layer indices inside (0, {length})")
    return points


def split_sequential(model: nn.Sequential, num_stages: int | None = None,
                     split_points: list[int] | None = None) -> list[nn.Sequential]:
    """``model`` as consecutive ``nn.Sequential`` stages (sharing its modules, so its parameters)."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"split_sequential needs nn.Sequential, got {type(model).__name__}; give split points "
                        "to split_gpt2, or build the stage modules yourself")
    layers = list(model)
    if split_points is None:
        if num_stages is None:
            raise ValueError("give num_stages (balanced by parameter count) or split_points")
        split_points = balanced_split_points([sum(p.numel() for p in m.parameters()) for m in layers], num_stages)
    points = _check_points(split_points, len(layers))
    bounds = [0, *points, len(layers)]
    return [nn.Sequential(*layers[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _decoder_layout(model):
    """(blocks, embedding, stage class) of an HF decoder LM, or None."""
    if hasattr(model, "transformer") and hasattr(model.transformer, "h") and hasattr(model, "lm_head"):
        return list(model.transformer.h), model.transformer.wte, GPT2Stage
    inner = getattr(model, "model", None)
    if inner is not None and all(hasattr(inner, a) for a in ("layers", "embed_tokens", "norm", "rotary_emb")) \
            and hasattr(model, "lm_head"):
        return list(inner.layers), inner.embed_tokens, LlamaStage
    return None


def split_decoder(model, num_stages: int | None = None, split_points: list[int] | None = None) -> list[nn.Module]:
    """An HF decoder LM (GPT-2, or Llama-style ``model.model.layers``) as stages: embeddings on the first, final
    norm + head on the last, blocks balanced by parameters (the embedding counted with the first block).

    ``split_points`` index the decoder blocks. A tied embedding/head becomes two copies, on the first and
    the last stage (``stage.tied_parameter``); ``PipelineRunner(..., sync_tied=True)`` keeps them tied.
    """
    layout = _decoder_layout(model)
    if layout is None:
        raise TypeError(f"split_decoder needs an HF GPT-2 (model.transformer.h) or Llama-style "
                        f"(model.model.layers) LM, got {type(model).__name__}; for an nn.Sequential use "
                        "split_sequential")
    blocks, embedding, stage_class = layout
    if split_points is None:
        if num_stages is None:
            raise ValueError("give num_stages (balanced by parameter count) or split_points")
        sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
        # the embeddings weigh on the first stage, the head on the last: count them with the end blocks
        sizes[0] += embedding.weight.numel()
        split_points = balanced_split_points(sizes, num_stages)
    points = _check_points(split_points, len(blocks))
    bounds = [0, *points, len(blocks)]
    count = len(bounds) - 1
    return [stage_class(model, blocks[a:b], first=i == 0, last=i == count - 1)
            for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]


def split_gpt2(model, num_stages: int | None = None, split_points: list[int] | None = None) -> list[nn.Module]:
    """``split_decoder`` for an HF GPT-2 LM (kept for its name); rejects other models."""
    if _decoder_layout(model) is None or _decoder_layout(model)[2] is not GPT2Stage:
        raise TypeError(f"split_gpt2 needs an HF GPT-2 LM (model.transformer.h, model.lm_head), got "
                        f"{type(model).__name__}; for an nn.Sequential use split_sequential, for Llama split_decoder")
    return split_decoder(model, num_stages, split_points)


class StageList(nn.ModuleList):
    """This rank's stage module(s), callable as the whole model for evaluation.

    Training goes through a schedule; ``stages(x)`` instead chains the first module of every rank (rank 0's
    stage, then rank 1's, ...) with point-to-point sends, forward only, and hands the last stage's output
    to every rank, so an unchanged ``validation_step`` works on all of them. Every rank must call it with
    the same ``x`` (only rank 0 reads it). Under Chimera the first module is the down replica's stage.
    """

    def forward(self, x):
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        device = x.device if x.device.type != "cpu" else None
        h = x
        if rank > 0:
            box = [None]
            dist.recv_object_list(box, src=rank - 1, device=device)
            h = box[0].to(x.device)
        h = self[0](h)
        if rank < world - 1:
            dist.send_object_list([h.detach()], dst=rank + 1, device=device)
        out = [h.detach() if rank == world - 1 else None]
        dist.broadcast_object_list(out, src=world - 1, device=device)
        return out[0].to(x.device)
