"""Pipeline parallelism on ``torch.distributed.pipelining``: model splitting and a GPipe / 1F1B runner.

``split_sequential`` and ``split_decoder`` (HF GPT-2 and Llama-style LMs) cut a model into stage modules (user split points, or balanced by
parameter count); ``PipelineRunner`` wraps one rank's stage in torch's ``PipelineStage`` and runs torch's
``ScheduleGPipe`` / ``Schedule1F1B`` (we use torch's stage and P2P; no transport of our own). The action
orders, simulator and Chimera's merged order live in ``effplug.parallel.schedules``.
"""

from __future__ import annotations

import torch
from torch import nn

SCHEDULE_NAMES = ("gpipe", "1f1b")
# torch versions whose torch.distributed.pipelining internals Chimera and AC-SGD's stages are tested with
SUPPORTED_TORCH = ("2.13",)


def require_pipelining_internals(feature: str, instead: str) -> None:
    """Raise, saying what to do, when ``feature`` (which uses private pipelining APIs) meets an untested torch."""
    if not torch.__version__.startswith(SUPPORTED_TORCH):
        raise RuntimeError(f"{feature} uses torch.distributed.pipelining internals tested on torch "
                           f"{', '.join(SUPPORTED_TORCH)}.x; this is {torch.__version__}. {instead} or pin torch.")


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


def _own_head(head: nn.Linear) -> nn.Linear:
    """A copy of a head whose weight is tied to the embedding on another stage."""
    copy = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
    copy.weight = nn.Parameter(head.weight.detach().clone())
    if head.bias is not None:
        copy.bias = nn.Parameter(head.bias.detach().clone())
    return copy


class _DecoderStage(nn.Module):
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


class _GPT2Stage(_DecoderStage):
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


class _LlamaStage(_DecoderStage):
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


def _decoder_layout(model):
    """(blocks, embedding, stage class) of an HF decoder LM, or None."""
    if hasattr(model, "transformer") and hasattr(model.transformer, "h") and hasattr(model, "lm_head"):
        return list(model.transformer.h), model.transformer.wte, _GPT2Stage
    inner = getattr(model, "model", None)
    if inner is not None and all(hasattr(inner, a) for a in ("layers", "embed_tokens", "norm", "rotary_emb")) \
            and hasattr(model, "lm_head"):
        return list(inner.layers), inner.embed_tokens, _LlamaStage
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
    if _decoder_layout(model) is None or _decoder_layout(model)[2] is not _GPT2Stage:
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


class PipelineRunner:
    """One rank's stage under torch's GPipe or 1F1B schedule.

    ``PipelineRunner(stage_module, stage_index, num_stages, schedule="1f1b", microbatches=4, loss_fn=...)``;
    ``step(inputs, targets)`` runs forward and backward of every micro-batch (rank 0 passes the inputs, the
    last rank the targets) and returns the mean micro-batch loss on the last stage, None elsewhere. The
    gradients are in the stage's parameters, scaled to the whole batch; step the optimizer afterwards.

    ``acsgd=ACSGDConfig(bits=4)`` sends the boundary activations as AC-SGD changes and the gradients at
    8 bits (``effplug.parallel.acsgd_stage``); then every rank passes ``sample_ids`` (one stable id per row,
    e.g. ``effplug.comm.acsgd.row_sample_ids(inputs)``) and ``self.meter`` counts the bytes sent.
    """

    def __init__(self, stage_module: nn.Module, stage_index: int, num_stages: int, schedule: str = "1f1b",
                 microbatches: int = 4, loss_fn=None, group=None, device: torch.device | str = "cpu",
                 sync_tied: bool = False, acsgd=None):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if schedule not in SCHEDULE_NAMES:
            raise ValueError(f"schedule={schedule!r}: use one of {SCHEDULE_NAMES} (Chimera: effplug.parallel.schedules)")
        self.stage_index, self.num_stages, self.microbatches = stage_index, num_stages, microbatches
        schedule_class = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B

        def make_schedule(stage):
            return schedule_class(stage, n_microbatches=microbatches, loss_fn=loss_fn)

        if acsgd is not None:
            from effplug.parallel.acsgd_stage import ACSGDStages

            self.acsgd = ACSGDStages(stage_module, stage_index, num_stages, device, group, acsgd, make_schedule)
            self.schedule = None
        else:
            self.acsgd = None
            self.schedule = make_schedule(PipelineStage(stage_module, stage_index, num_stages, torch.device(device),
                                                        group=group))
        # a weight tied across the first and last stage (split_decoder): every rank joins the group creation
        self.tied_group = torch.distributed.new_group([0, num_stages - 1]) if sync_tied else None
        self.tied_parameter = getattr(stage_module, "tied_parameter", None)

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == self.num_stages - 1

    def step(self, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None,
             sample_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        losses: list = []
        args = (inputs,) if self.is_first else ()
        schedule = self.schedule
        if self.acsgd is not None:
            if sample_ids is None:
                raise ValueError("AC-SGD caches activations per sample: pass sample_ids on every rank "
                                 "(effplug.comm.acsgd.row_sample_ids(inputs) gives stable ids)")
            schedule = self.acsgd.prepare(sample_ids, self.microbatches)
        schedule.step(*args, target=targets if self.is_last else None, losses=losses)
        if self.acsgd is not None:
            self.acsgd.end_step()
        if self.tied_group is not None and self.tied_parameter is not None:
            # embedding gradient (first stage) + head gradient (last stage) = the tied weight's gradient
            torch.distributed.all_reduce(self.tied_parameter.grad, group=self.tied_group)
        if self.is_last:
            return torch.stack([loss.detach() for loss in losses]).mean()
        return None
