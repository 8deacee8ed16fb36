"""AC-SGD on ``torch.distributed.pipelining``'s wire: a stage module wrapper and a stage that knows about it.

torch's ``PipelineStage`` sends fixed-shape tensors, so a boundary message is

- forward: ``(payload, carrier)``. ``payload`` is the uint8 Q(a - m[ξ]) from ``ACSGDCodec.encode_bytes``
  (no gradient); ``carrier`` is an fp32 tensor whose *gradient* carries the 8-bit quantized activation
  gradient back, bit-packed into fp32 words (``gradient_wire_nbytes``). Its forward value is never read,
  so it is not sent: only the payload goes forward.
- warm-up (a batch holding a sample not seen before): the plain activation, exact, and both ends cache it.

A step is compressed only when every sample of the batch has been seen; every rank sees the same batch ids,
so all ranks pick the same mode without talking. The two modes have different message shapes, so
``ACSGDStages`` keeps two ``PipelineStage``s over the same wrapped module, one per mode.

torch infers message shapes by running the stage once on placeholder tensors; ``ACSGDPipelineStage`` marks
those runs (``dry_run``) so they leave the caches and seed streams alone. That hooks two private methods of
``PipelineStage`` (pinned with ``effplug.parallel.pipeline.SUPPORTED_TORCH``, as Chimera is).
"""

from __future__ import annotations

import torch
from torch import nn

from effplug.codecs import SeedStream
from effplug.parallel.pipeline.acsgd import ACSGDCodec, ACSGDConfig, activation_wire_nbytes, gradient_wire_nbytes
from effplug.parallel.pipeline.runner import require_pipelining_internals
from effplug.profile import CommMeter
from effplug.sizes import tensor_nbytes


class _SendChange(torch.autograd.Function):
    """Sender: activation -> (payload bytes, carrier). Backward decodes the carrier's gradient bytes."""

    @staticmethod
    def forward(ctx, activation, boundary):
        ctx.boundary, ctx.shape, ctx.dtype = boundary, activation.shape, activation.dtype
        numel = activation.numel()
        carrier = activation.new_zeros(gradient_wire_nbytes(numel, boundary.codec.grad_bits,
                                                            boundary.codec.group_size) // 4, dtype=torch.float32)
        if boundary.dry_run:
            payload = torch.zeros(activation_wire_nbytes(numel, boundary.codec.bits, boundary.codec.group_size),
                                  dtype=torch.uint8, device=activation.device)
        else:
            payload = boundary.codec.encode_bytes(activation, boundary.current_ids())
        ctx.mark_non_differentiable(payload)
        return payload, carrier

    @staticmethod
    def backward(ctx, _grad_payload, grad_carrier):
        boundary = ctx.boundary
        if boundary.dry_run:
            return grad_carrier.new_zeros(ctx.shape, dtype=ctx.dtype), None
        like = torch.empty(ctx.shape, dtype=ctx.dtype, device="meta")
        grad = boundary.codec.decode_gradient_bytes(grad_carrier.contiguous().view(torch.uint8), like)
        return grad.view(ctx.shape), None


class _ReceiveChange(torch.autograd.Function):
    """Receiver: (carrier, payload) -> m + Q(a - m). Backward packs the 8-bit gradient into the carrier's."""

    @staticmethod
    def forward(ctx, carrier, payload, boundary):
        ctx.boundary, ctx.carrier_numel = boundary, carrier.numel()
        if boundary.dry_run:
            rows = boundary.rows()
            return torch.zeros((rows, *boundary.row_shape), dtype=boundary.row_dtype, device=carrier.device)
        return boundary.codec.decode_bytes(payload, boundary.current_ids())

    @staticmethod
    def backward(ctx, grad):
        boundary = ctx.boundary
        if boundary.dry_run:
            return torch.zeros(ctx.carrier_numel, dtype=torch.float32, device=grad.device), None, None
        data = boundary.codec.encode_gradient_bytes(grad.contiguous())
        return data.view(torch.float32), None, None


class _Boundary:
    """One end of one stage boundary: its codec, the micro-batch ids in forward order, and the dry-run flag."""

    def __init__(self, codec: ACSGDCodec):
        self.codec = codec
        self.dry_run = False
        self.ids: list[torch.Tensor] = []
        self.position = 0
        self.row_shape: tuple = ()
        self.row_dtype = torch.float32
        self.dense_bytes = 0

    def start_step(self, ids: list[torch.Tensor]) -> None:
        self.ids, self.position = ids, 0

    def current_ids(self) -> torch.Tensor:
        return self.ids[self.position]

    def rows(self) -> int:
        return self.ids[0].numel()

    def meter_dense(self, tensor: torch.Tensor) -> None:
        """What the plain pipeline sends for this message (the receiver: the gradient of ``tensor``)."""
        self.dense_bytes += tensor_nbytes(tensor)

    def remember(self, activation: torch.Tensor, ids: torch.Tensor) -> None:
        self.codec.remember(activation, ids)


class ACSGDStageModule(nn.Module):
    """``inner`` with AC-SGD at its input (every stage but the first) and its output (every stage but the last).

    ``compressed=False`` is the warm-up: activations pass exact and both ends cache them.
    """

    def __init__(self, inner: nn.Module, first: bool, last: bool, config: ACSGDConfig, stage_index: int):
        super().__init__()
        self.inner = inner

        streams = SeedStream(config.seed).spawn(f"stage{stage_index}")

        def boundary(end: str) -> _Boundary:  # its own independent seed stream per boundary end
            return _Boundary(ACSGDCodec(config.bits, config.grad_bits, config.group_size, streams.spawn(end)))

        self.receiver = None if first else boundary("receiver")
        self.sender = None if last else boundary("sender")
        self.compressed = False

    def boundaries(self) -> list[_Boundary]:
        return [b for b in (self.receiver, self.sender) if b is not None]

    def forward(self, *args):
        receiver, sender = self.receiver, self.sender
        if receiver is not None:
            if self.compressed:
                payload, carrier = args
                x = _ReceiveChange.apply(carrier, payload, receiver)
            else:
                (x,) = args
                if not receiver.dry_run:
                    receiver.remember(x, receiver.current_ids())
                    receiver.row_shape, receiver.row_dtype = tuple(x.shape[1:]), x.dtype
            if not receiver.dry_run:
                receiver.meter_dense(x)
            args = (x,)
        y = self.inner(*args)
        if sender is not None:
            if not sender.dry_run:
                sender.meter_dense(y)
            if self.compressed:
                y = _SendChange.apply(y, sender)
            elif not sender.dry_run:
                sender.remember(y, sender.current_ids())
        for boundary in self.boundaries():
            if not boundary.dry_run:
                boundary.position += 1
        return y


def _acsgd_stage_class():
    from torch.distributed.pipelining import PipelineStage

    class ACSGDPipelineStage(PipelineStage):
        """A ``PipelineStage`` whose shape-inference runs do not touch the AC-SGD caches, and which, when
        ``compressed``, keeps the carrier off the forward wire (only its gradient travels; the receiver
        never reads its forward value)."""

        compressed = False
        meter: CommMeter | None = None  # counts the bytes of every send this stage posts

        def _without_carrier(self, ops):
            return [op for op in ops if op.tensor.dtype == torch.uint8] if self.compressed else ops

        def _metered(self, ops):
            if self.meter is not None:
                for op in ops:
                    self.meter.record("send", tensor_nbytes(op.tensor))
            return ops

        def get_fwd_send_ops(self, fwd_chunk_id):
            return self._metered(self._without_carrier(super().get_fwd_send_ops(fwd_chunk_id)))

        def get_bwd_send_ops(self, bwd_chunk_id):
            return self._metered(super().get_bwd_send_ops(bwd_chunk_id))

        def get_fwd_recv_ops(self, fwd_chunk_id):
            return self._without_carrier(super().get_fwd_recv_ops(fwd_chunk_id))

        def _dry(self, method, *args, **kwargs):
            boundaries = self.submod.boundaries()
            for b in boundaries:
                b.dry_run = True
            try:
                return method(*args, **kwargs)
            finally:
                for b in boundaries:
                    b.dry_run = False

        def _forward_metadata_inference(self, *args, **kwargs):
            return self._dry(super()._forward_metadata_inference, *args, **kwargs)

        def _backward_metadata_inference(self, *args, **kwargs):
            return self._dry(super()._backward_metadata_inference, *args, **kwargs)

    return ACSGDPipelineStage


class ACSGDStages:
    """The warm-up and the compressed ``PipelineStage`` of one rank, over one ``ACSGDStageModule``.

    ``make_schedule(stage)`` builds the torch schedule for a stage. ``prepare(sample_ids, microbatches)``
    picks the mode for a step (compressed only if every id was seen) and returns the schedule to run.
    ``meter`` counts the bytes this rank's stages put on the wire (sent) next to the dense fp32 bytes.
    """

    def __init__(self, module: nn.Module, stage_index: int, num_stages: int, device, group, config: ACSGDConfig,
                 make_schedule):
        require_pipelining_internals("AC-SGD on the pipeline", "Run without acsgd")
        stage_class = _acsgd_stage_class()
        self.module = ACSGDStageModule(module, stage_index == 0, stage_index == num_stages - 1, config, stage_index)
        self.meter = CommMeter()
        self.schedules = {}
        for compressed in (False, True):
            stage = stage_class(self.module, stage_index, num_stages, torch.device(device), group=group)
            stage.compressed, stage.meter = compressed, self.meter
            self.schedules[compressed] = make_schedule(stage)
        self.seen: set[int] = set()

    def prepare(self, sample_ids: torch.Tensor, microbatches: int):
        ids = [int(i) for i in sample_ids.reshape(-1).tolist()]
        compressed = all(i in self.seen for i in ids)
        self.module.compressed = compressed
        chunks = list(sample_ids.reshape(-1).chunk(microbatches))
        for boundary in self.module.boundaries():
            boundary.start_step(chunks)
        self.seen.update(ids)
        return self.schedules[compressed]

    def end_step(self) -> None:
        dense = sum(b.dense_bytes for b in self.module.boundaries())
        for b in self.module.boundaries():
            b.dense_bytes = 0
        self.meter.dense_bytes += dense
        self.meter.end_step()

    @property
    def compressed(self) -> bool:
        return self.module.compressed

    def state_dict(self) -> dict:
        state = {"seen": torch.tensor(sorted(self.seen), dtype=torch.int64)}
        for name in ("receiver", "sender"):
            boundary = getattr(self.module, name)
            if boundary is not None:
                state[name] = {**boundary.codec.state_dict(), "row_shape": list(boundary.row_shape),
                               "row_dtype": str(boundary.row_dtype).removeprefix("torch.")}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.seen = {int(i) for i in state["seen"].tolist()}
        for name in ("receiver", "sender"):
            boundary = getattr(self.module, name)
            if boundary is not None:
                boundary.codec.load_state_dict(state[name])
                boundary.row_shape = tuple(state[name]["row_shape"])
                boundary.row_dtype = getattr(torch, state[name]["row_dtype"])
