"""Rank DP x PP x TP x ZeRO-stage x compressor layouts for a model on a topology: per-rank memory, communication,
bubble and projected step time. A model, not a measurement: docs/plan.md gives its error against the runs here.

For one step of ``tokens = global_batch · seq_len``:
- compute is ``6 · params · tokens / (gpus · peak · mfu)`` seconds per rank (the 6ND rule), stretched by the
  pipeline bubble ``compute / (1 − bubble)`` (:func:`effplug.parallel.schedules.analytic_bubble`);
- Chimera's bubble is simulated (``parallel.schedules``); it keeps two stages per worker, so its model
  states and gradient bytes double;
- the pipeline sends each micro-batch's boundary activations (``micro_batch · seq_len · hidden`` bf16 values)
  forward and their gradients back, ``2 (M + PP − 2)`` hand-offs on the critical path; AC-SGD divides them
  by its measured ratio;
- data parallelism exchanges ``grad_bytes · params / PP`` per rank: a ring all-reduce for DDP and ZeRO 1-2
  (reduce-scatter + all-gather moves the same bytes), 1.5x that for ZeRO 3 (the ZeRO paper's 3Ψ against 2Ψ),
  and a compressor's bytes through the collective it uses (top-k: an all-gather of values and indices);
- tensor parallelism (Megatron-LM, Shoeybi et al. 2019) all-reduces each layer's ``micro_batch · seq_len ·
  hidden`` bf16 activations twice forward and twice backward among its ``TP`` ranks, the innermost group;
- nothing overlaps: the step is compute + pipeline hand-offs + tensor all-reduces + gradient exchange + codec.
Per-rank memory is ZeRO's model states for ``params / (PP · TP)`` over ``DP`` ranks (``estimate_memory``) plus
the activations of the micro-batches a stage keeps in flight: ``(10 + 24/TP)`` bytes per token, hidden unit
and layer (Korthikanti et al. 2022, Table 2, without the attention-score term).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from effplug.parallel.planner.collectives import all_gather, p2p, ring_allreduce
from effplug.parallel.planner.topologies import Topology

# What each compressor sends next to dense fp32 all-reduce, measured by benchmarks/comm.py on this machine
# (docs/benchmarks.md, "Gradient communication compression" and "Natural dithering").
COMPRESSORS = {
    "none": {"ratio": 1.0, "collective": "allreduce"},
    "natural": {"ratio": 4.0, "collective": "allreduce"},
    "cgx4": {"ratio": 7.0, "collective": "allreduce"},
    "dither": {"ratio": 7.1, "collective": "allreduce"},
    "topk1%": {"density": 0.01, "collective": "allgather"},  # 4-byte value + 4-byte index per kept entry
}
ACSGD_RATIO = 7.5  # AC-SGD 4-bit, measured (docs/acsgd.md)
SCHEDULES = ("1f1b", "gpipe", "chimera")
CHIMERA_MAX_MICROBATCHES = 64  # its bubble is simulated, not closed-form: bounded so the planner stays fast


@dataclass(frozen=True)
class Workload:
    params: float
    global_batch: int = 512  # sequences per step
    seq_len: int = 2048
    micro_batch: int = 1  # sequences per pipeline micro-batch
    hidden: int | None = None  # None: from params, assuming 12·layers·hidden² parameters, layers = hidden/128
    layers: int | None = None
    peak_tflops: float = 989.0  # dense bf16 peak of one H100 SXM
    mfu: float = 0.4
    gpu_mem_gb: float = 80.0
    headroom: float = 0.9
    param_bytes: int = 2
    grad_bytes: int = 4  # fp32 gradients, as the comm benchmark sends
    optimizer_bytes: int = 12
    codec_s: dict = field(default_factory=dict)  # compressor -> encode+decode seconds per step, if measured

    def __post_init__(self):
        for name in ("params", "global_batch", "seq_len", "micro_batch", "peak_tflops", "mfu", "gpu_mem_gb",
                     "headroom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name}={value!r}: use a positive, finite number")
        if self.mfu > 1 or self.headroom > 1:
            raise ValueError(f"mfu={self.mfu}, headroom={self.headroom}: both are fractions in (0, 1]")

    @classmethod
    def from_model(cls, model, **settings) -> Workload:
        """A workload for an instantiated model: its parameter count, and an HF config's hidden size and layers."""
        config = getattr(model, "config", None)
        shape = {}
        for field_name, keys in (("hidden", ("hidden_size", "n_embd", "d_model")),
                                 ("layers", ("num_hidden_layers", "n_layer", "num_layers"))):
            value = next((getattr(config, k) for k in keys if isinstance(getattr(config, k, None), int)), None)
            if value is not None:
                shape[field_name] = value
        return cls(float(sum(p.numel() for p in model.parameters())), **{**shape, **settings})

    @property
    def model_hidden(self) -> int:
        if self.hidden:
            return self.hidden
        return max(128, 128 * round((self.params * 128 / 12) ** (1 / 3) / 128))  # a multiple of 128, as real models

    @property
    def model_layers(self) -> int:
        return self.layers or max(1, round(self.model_hidden / 128))


@dataclass
class LayoutCost:
    dp: int
    pp: int
    tp: int
    zero: int
    compressor: str
    schedule: str
    microbatches: int
    memory_gib: float
    fits: bool
    compute_s: float
    bubble: float
    pipeline_s: float
    tensor_s: float
    gradient_s: float
    codec_s: float

    @property
    def step_s(self) -> float:
        return self.compute_s / (1 - self.bubble) + self.pipeline_s + self.tensor_s + self.gradient_s + self.codec_s

    @property
    def comm_s(self) -> float:
        return self.pipeline_s + self.tensor_s + self.gradient_s

    @property
    def label(self) -> str:
        parts = [f"DP{self.dp}"] + ([f"PP{self.pp} {self.schedule}"] if self.pp > 1 else [])
        parts += [f"TP{self.tp}"] if self.tp > 1 else []
        parts.append(f"ZeRO-{self.zero}" if self.zero else "DDP")
        if self.compressor != "none":
            parts.append(self.compressor)
        dims = 1 + (self.pp > 1) + (self.tp > 1)
        return " x ".join(parts[:dims]) + " " + " ".join(parts[dims:])


@functools.lru_cache(maxsize=4096)
def _bubble(schedule: str, pp: int, microbatches: int) -> float:
    """Every ZeRO stage and compressor of a layout shares its schedule's bubble: simulate Chimera once."""
    from effplug.parallel.schedules import analytic_bubble

    return analytic_bubble(schedule, pp, microbatches)


def gradient_seconds(compressor: str, zero: int, dp: int, grad_bytes_per_rank: float, link) -> float:
    if compressor == "none":
        return ring_allreduce(dp, grad_bytes_per_rank, link) * (1.5 if zero == 3 else 1.0)
    spec = COMPRESSORS[compressor]
    if spec["collective"] == "allgather":
        kept = spec["density"] * grad_bytes_per_rank / 4  # values of 4 bytes
        return all_gather(dp, kept * 8, link)
    return ring_allreduce(dp, grad_bytes_per_rank / spec["ratio"], link)


def evaluate(work: Workload, topology: Topology, dp: int, pp: int, zero: int, compressor: str = "none",
             schedule: str = "1f1b", acsgd: bool = False, tp: int = 1) -> LayoutCost | None:
    """One layout's cost, or None when it is not a layout (the batch does not split into micro-batches)."""
    from effplug.parallel.zero import estimate_memory

    if work.global_batch % (dp * work.micro_batch):
        return None
    microbatches = work.global_batch // (dp * work.micro_batch)
    if pp > 1 and microbatches < pp:
        return None
    if schedule == "chimera" and (pp % 2 or microbatches % 2 or microbatches > CHIMERA_MAX_MICROBATCHES):
        return None  # Chimera runs two pipelines of half the micro-batches each
    replicas = 2 if schedule == "chimera" else 1  # Chimera keeps two stages (one per direction) on each worker
    if work.model_hidden % tp:
        return None
    dp_link, pp_link = topology.links(dp * tp, pp)  # TP is the innermost group: DP strides over it
    tp_link = topology.links(tp, 1)[0]
    tokens = work.global_batch * work.seq_len
    compute = 6 * work.params * tokens / (topology.gpus * work.peak_tflops * 1e12 * work.mfu)
    bubble = _bubble(schedule, pp, microbatches) if pp > 1 else 0.0
    boundary = work.micro_batch * work.seq_len * work.model_hidden * 2 / (ACSGD_RATIO if acsgd else 1.0)
    pipeline = 2 * (microbatches + pp - 2) * p2p(boundary, pp_link) if pp > 1 else 0.0
    activation_bytes = work.micro_batch * work.seq_len * work.model_hidden * 2
    tensor = (work.model_layers / pp) * microbatches * 4 * ring_allreduce(tp, activation_bytes, tp_link) \
        if tp > 1 else 0.0
    grad_bytes = replicas * work.grad_bytes * work.params / (pp * tp)
    gradient = gradient_seconds(compressor, zero, dp, grad_bytes, dp_link)
    states = estimate_memory(work.params / (pp * tp), dp, zero, param_bytes=work.param_bytes, grad_bytes=work.grad_bytes,
                             optimizer_bytes=work.optimizer_bytes)
    in_flight = microbatches if schedule == "gpipe" else min(pp, microbatches)
    per_token = 10 + 24 / tp
    activations = per_token * work.model_hidden * (work.model_layers / pp) * work.seq_len * work.micro_batch \
        * in_flight
    memory = (replicas * states.model_state_bytes + activations) / 2**30
    return LayoutCost(dp, pp, tp, zero, compressor + ("+acsgd" if acsgd else ""), schedule if pp > 1 else "-",
                      microbatches, memory, memory <= work.headroom * work.gpu_mem_gb, compute, bubble, pipeline,
                      tensor, gradient, work.codec_s.get(compressor, 0.0))


def rank_layouts(work: Workload, topology: Topology, max_pp: int = 64, max_tp: int = 8) -> list[LayoutCost]:
    """Every DP x PP x TP split of the GPUs (PP and TP powers of two; PP at most the layer count, TP at most
    ``max_tp``, one node's worth), each ZeRO stage with dense gradients and DDP with each compressor, each
    schedule; fitting layouts first, then by step time."""
    rows = []
    tp = 1
    while tp <= min(max_tp, topology.gpus):
        pp = 1
        while pp * tp <= topology.gpus and pp <= min(max_pp, work.model_layers):
            if topology.gpus % (pp * tp) == 0:
                dp = topology.gpus // (pp * tp)
                for schedule in SCHEDULES if pp > 1 else ("1f1b",):
                    for acsgd in (False, True) if pp > 1 else (False,):
                        for zero in (0, 1, 2, 3):
                            rows.append(evaluate(work, topology, dp, pp, zero, "none", schedule, acsgd, tp))
                        for name in COMPRESSORS:
                            if name != "none" and dp > 1:
                                rows.append(evaluate(work, topology, dp, pp, 0, name, schedule, acsgd, tp))
            pp *= 2
        tp *= 2
    rows = [r for r in rows if r is not None]
    if not rows:
        raise ValueError(f"no layout splits global_batch={work.global_batch} into micro-batches of "
                         f"{work.micro_batch} over {topology.gpus} GPUs; use a global batch divisible by the GPUs")
    return sorted(rows, key=lambda r: (not r.fits, r.step_s))
