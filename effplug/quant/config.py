"""``QATConfig``: one frozen dataclass for quantization-aware training, applied with ``quantize_model``."""

from __future__ import annotations

from dataclasses import dataclass, field

from effplug.options import checks_keywords, name_patterns
from effplug.quant.presets import get_preset

WEIGHT_ESTIMATORS = ("minmax", "percentile", "mse", "octav", "lsq", "lsq+", "dorefa")
ACT_ESTIMATORS = ("minmax", "percentile", "mse", "octav", "lsq", "lsq+", "pact")
GRADIENTS = ("ste", "mad")
MIN_BITS, MAX_BITS = 2, 8


def check_bits(value, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(f"{name}={value!r} is not supported; use an integer from {MIN_BITS} to {MAX_BITS}"
                         + (" (or None to keep it in floating point)" if allow_none else ""))


def _check_choice(value, name: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(allowed)}")


@checks_keywords
@dataclass(frozen=True)
class QATConfig:
    """What to quantize and how.

    - ``weight_bits`` / ``act_bits``: 2-8 (``act_bits=None`` quantizes weights only).
    - ``weight_estimator`` / ``act_estimator``: how the range is set (see ``WEIGHT_ESTIMATORS``,
      ``ACT_ESTIMATORS``); ``lsq``/``lsq+``/``pact`` learn it.
    - ``weight_gradient`` / ``act_gradient``: ``ste`` (clipped straight-through) or ``mad`` (OCTAV's
      magnitude-aware differentiation, ``s/|x|`` outside the clip). Defaults follow OCTAV's MPH advice:
      MAD for weights with the ``octav`` estimator, STE everywhere else.
    - ``per_channel``: weights per output channel; ``None`` takes the backend preset's choice.
    - ``backend``: a preset in ``effplug.quant.presets.PRESETS``.
    - ``first_last_bits``: the first and last quantizable layers (registration order) use this for weights
      and activations; ``None`` keeps them at ``weight_bits``/``act_bits``.
    - ``exclude``: fnmatch patterns of module names left in floating point.
    - ``bits``: per-layer overrides ``{pattern: bits}`` or ``{pattern: (weight_bits, act_bits)}``; or ``"auto"``:
      weight bits per layer from ``search_bits`` chosen under ``budget_bits`` (average weight bits over the
      quantized layers) or ``budget_bytes``, minimising HAWQ's Σ Tr(H_l)·MSE_l(b) (``effplug.quant.bit_search``).
      It needs calibration losses: the Lightning and HF doors take them from the training data.
    - ``search_method``: ``"hessian"`` (Hutchinson trace, HAWQ-v2) or ``"fisher"`` (one backward per batch).
    - ``bit_widths``: vertical-layered once-QAT; one set of weights serves every listed width.
    - ``quantize_embeddings``: weight-only quantization of ``nn.Embedding`` too.
    - ``act_momentum``: EMA momentum of non-learned activation ranges (eval uses the EMA).
    """

    weight_bits: int = 4
    act_bits: int | None = 8
    weight_estimator: str = "octav"
    act_estimator: str = "minmax"
    weight_gradient: str | None = None
    act_gradient: str | None = None
    per_channel: bool | None = None
    backend: str = "generic"
    first_last_bits: int | None = 8
    exclude: tuple = ()
    bits: dict | str = field(default_factory=dict)
    budget_bits: float | None = None
    budget_bytes: int | None = None
    search_bits: tuple = (2, 3, 4, 8)
    search_method: str = "hessian"
    search_seed: int = 0
    bit_widths: tuple | None = None
    quantize_embeddings: bool = False
    act_momentum: float = 0.1
    percentile: float = 99.99

    def __post_init__(self):
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.act_bits, "act_bits", allow_none=True)
        check_bits(self.first_last_bits, "first_last_bits", allow_none=True)
        _check_choice(self.weight_estimator, "weight_estimator", WEIGHT_ESTIMATORS)
        _check_choice(self.act_estimator, "act_estimator", ACT_ESTIMATORS)
        for name in ("weight_gradient", "act_gradient"):
            if getattr(self, name) is not None:
                _check_choice(getattr(self, name), name, GRADIENTS)
        get_preset(self.backend)
        object.__setattr__(self, "exclude", name_patterns(self.exclude))
        self._check_search()
        if not isinstance(self.bits, dict) and self.bits != "auto":
            raise ValueError(f"bits must be a dict {{name pattern: bits or (weight_bits, act_bits)}} or 'auto'; got "
                             f"{self.bits!r}")
        for pattern, value in (self.bits.items() if isinstance(self.bits, dict) else ()):
            pair = value if isinstance(value, (tuple, list)) else (value, value)
            if len(pair) != 2:
                raise ValueError(f"bits[{pattern!r}]={value!r}: give one integer or (weight_bits, act_bits)")
            check_bits(pair[0], f"bits[{pattern!r}] weight bits")
            check_bits(pair[1], f"bits[{pattern!r}] activation bits", allow_none=True)
        if self.bit_widths is not None:
            widths = tuple(sorted(set(self.bit_widths)))
            if len(widths) < 2:
                raise ValueError(f"bit_widths={self.bit_widths!r}: list at least two widths, e.g. [2, 3, 4, 8]")
            for b in widths:
                check_bits(b, "bit_widths entry")
            if self.weight_estimator in ("dorefa", "lsq+"):
                raise ValueError(f"bit_widths (once-QAT) needs a symmetric weight grid; weight_estimator="
                                 f"{self.weight_estimator!r} is not supported there, use octav, minmax or lsq")
            object.__setattr__(self, "bit_widths", widths)
        if not 0.0 < self.act_momentum <= 1.0:
            raise ValueError(f"act_momentum={self.act_momentum!r} must be in (0, 1]")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile={self.percentile!r} must be in (50, 100]")

    def _check_search(self) -> None:
        auto = self.bits == "auto"
        budgets = [b for b in (self.budget_bits, self.budget_bytes) if b is not None]
        if auto and len(budgets) != 1:
            raise ValueError("bits='auto' needs exactly one budget: budget_bits=3.0 (average weight bits) or "
                             "budget_bytes=... (bytes of quantized weights)")
        if not auto and budgets:
            raise ValueError("budget_bits/budget_bytes only apply with bits='auto'")
        if self.budget_bits is not None and (isinstance(self.budget_bits, bool) or not isinstance(
                self.budget_bits, (int, float)) or not MIN_BITS <= self.budget_bits <= MAX_BITS):
            raise ValueError(f"budget_bits={self.budget_bits!r}: use a number from {MIN_BITS} to {MAX_BITS}")
        if self.budget_bytes is not None and (isinstance(self.budget_bytes, bool) or not isinstance(
                self.budget_bytes, (int, float)) or not self.budget_bytes > 0):
            raise ValueError(f"budget_bytes={self.budget_bytes!r}: use a positive number of bytes")
        widths = tuple(sorted(set(self.search_bits)))
        if not widths:
            raise ValueError("search_bits is empty; list the candidate widths, e.g. (2, 3, 4, 8)")
        for b in widths:
            check_bits(b, "search_bits entry")
        object.__setattr__(self, "search_bits", widths)
        _check_choice(self.search_method, "search_method", ("hessian", "fisher"))
        if auto and self.bit_widths is not None:
            raise ValueError("bits='auto' picks one width per layer; once-QAT (bit_widths) trains every width, "
                             "so use one or the other")

    @property
    def preset(self):
        return get_preset(self.backend)

    @property
    def resolved_weight_gradient(self) -> str:
        return self.weight_gradient or ("mad" if self.weight_estimator == "octav" else "ste")

    @property
    def resolved_act_gradient(self) -> str:
        return self.act_gradient or "ste"

    @property
    def weight_per_channel(self) -> bool:
        return self.preset.weight_per_channel if self.per_channel is None else bool(self.per_channel)
