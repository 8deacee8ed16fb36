"""``CompressionConfig``: one small frozen dataclass for every activation-compression method."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from effplug.kernels.pack import ALLOWED_BITS, validate_quant_args
from effplug.options import checks_keywords

METHODS = ("actnn", "gact", "mesa", "comet", "division")
SCOPES = ("auto", "model")
ERROR_MODES = ("rel", "abs")


def _fail(field: str, allowed: str, got) -> None:
    raise ValueError(f"{field}={got!r} is not supported; use {allowed}")


@checks_keywords
@dataclass(frozen=True)
class CompressionConfig:
    """What to compress and how.

    method: ``"actnn"`` fixed bits; ``"gact"`` adaptive bits averaging ``bits``; ``"mesa"`` running
        per-channel/per-head ranges; ``"comet"`` error-bounded; ``"division"`` low-pass bf16 + low-bit residual.
    bits: 1, 2, 4 or 8 (gact: any target average from 1 to 8, e.g. 3.0); ``None`` (the default) means 4.
        COMET takes no ``bits``: its code width follows ``error_bound``, so passing one is an error.
    group_size: elements per min/scale group (a power of two, 32..4096).
    min_numel: smaller saved tensors stay exact (their metadata would cost more than they save).
    scope: ``"auto"`` keeps the body of HF ``PreTrainedModel``s, LightningModules and loss modules exact
        (that is where losses are computed) and compresses their sub-modules; ``"model"`` compresses
        everything saved inside the model's forward.
    recalibrate_every: forwards between GACT sensitivity / COMET bound recalibrations.
    probes_per_step: saved tensors measured per calibration step (one extra backward each, plus one for the
        reference). A calibration round spreads over as many steps as it needs, so each costs about 3x a plain
        step at the default 1; ``None`` measures every tensor in one step (GACT's own schedule).
    sensitivity: GACT's objective. ``"absolute"`` is the paper's total gradient variance ``||g_l - g||**2``;
        ``"relative"`` sums each parameter tensor's relative error, which is what adaptive optimizers
        (Adam scales every parameter's update) are sensitive to.
    error_bound, error_mode: COMET's bound, absolute (``"abs"``) or relative to the tensor's value range (``"rel"``).
    grad_tolerance: COMET's target relative gradient error per tensor, used to adapt its bound.
    ema_decay: Mesa's running-range decay.
    lowpass_block: DIVISION's average-pool block edge.
    pack_bool: store bool masks at 1 bit (exact).
    preserve_zeros: for saved tensors whose minimum is exactly 0 (ReLU outputs), add a 1-bit ``x > 0`` mask
        so the sign pattern backward relies on stays exact.
    checkpoint: also checkpoint the model's repeated blocks (HF gradient checkpointing, else each block of its
        longest ``nn.ModuleList``): forward saves only the block boundaries, compressed; backward recomputes
        each block exactly.
    """

    method: str = "actnn"
    bits: float | None = None
    group_size: int = 128
    stochastic: bool = True
    min_numel: int = 256
    scope: str = "auto"
    seed: int | None = None
    recalibrate_every: int = 200
    probes_per_step: int | None = 1
    sensitivity: str = "absolute"
    error_bound: float = 1e-2
    error_mode: str = "rel"
    grad_tolerance: float = 0.05
    ema_decay: float = 0.9
    lowpass_block: int = 8
    pack_bool: bool = True
    preserve_zeros: bool = True
    checkpoint: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            _fail("method", ", ".join(repr(m) for m in METHODS), self.method)
        if self.method == "comet" and self.bits is not None:
            raise ValueError(f"bits={self.bits!r} has no meaning for method='comet': its code width follows "
                             "error_bound (tighter bound, more bits). Leave bits unset and set error_bound instead")
        if self.bits is None and self.method != "comet":
            object.__setattr__(self, "bits", 4)
        if self.method == "gact":
            if not isinstance(self.bits, (int, float)) or not 1 <= self.bits <= 8:
                _fail("bits", "a target average from 1 to 8 for method='gact'", self.bits)
        elif self.method != "comet" and self.bits not in ALLOWED_BITS:
            _fail("bits", "one of 1, 2, 4, 8", self.bits)
        bits = 4 if self.method in ("gact", "comet") else int(self.bits)
        validate_quant_args(bits, self.group_size)
        if not isinstance(self.min_numel, int) or self.min_numel < 1:
            _fail("min_numel", "a positive integer", self.min_numel)
        if self.scope not in SCOPES:
            _fail("scope", "'auto' or 'model'", self.scope)
        if self.sensitivity not in ("relative", "absolute"):
            _fail("sensitivity", "'relative' or 'absolute'", self.sensitivity)
        if not isinstance(self.recalibrate_every, int) or self.recalibrate_every < 1:
            _fail("recalibrate_every", "a positive integer", self.recalibrate_every)
        if self.probes_per_step is not None and (
                isinstance(self.probes_per_step, bool) or not isinstance(self.probes_per_step, int)
                or self.probes_per_step < 1):
            _fail("probes_per_step", "a positive integer, or None for every tensor in one step", self.probes_per_step)
        if not self.error_bound > 0:
            _fail("error_bound", "a positive float", self.error_bound)
        if self.error_mode not in ERROR_MODES:
            _fail("error_mode", "'rel' or 'abs'", self.error_mode)
        if self.error_mode == "rel" and not self.error_bound < 1:
            _fail("error_bound", "a fraction below 1 of the value range with error_mode='rel'", self.error_bound)
        if not 0 < self.grad_tolerance < 1:
            _fail("grad_tolerance", "a float in (0, 1)", self.grad_tolerance)
        if not 0 <= self.ema_decay < 1:
            _fail("ema_decay", "a float in [0, 1)", self.ema_decay)
        if not isinstance(self.lowpass_block, int) or self.lowpass_block < 2:
            _fail("lowpass_block", "an integer >= 2", self.lowpass_block)

    def to_dict(self) -> dict:
        return asdict(self)
