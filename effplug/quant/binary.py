"""DIR-Net binarization (Qin et al., IJCV 2022; after IR-Net, CVPR 2020): 1-bit weights and activations.

Three parts, each following the paper's description and IR-Net's public formulation:

- **IMB** (information-maximizing binarization, IR-Net's Libra-PB): per output channel the weight is
  balanced and standardized, ``w^ = (w - mean_c(w)) / std_c(w)``, then ``Q_w = sign(w^) * s_c`` with the
  power-of-two scale ``s_c = 2^round(log2(mean_c |w^|))`` (a bit shift at inference). ``Q_a = sign(a)``.
- **DTE** (the two-stage estimator): forward ``sign(x)``, backward the derivative of ``k tanh(t x)``,
  ``k t (1 - tanh^2(t x))``, with ``t = T_min 10^(p log10(T_max / T_min))`` over training progress ``p`` and
  ``k = max(1/t, 1)``: stage one (``t < 1``) is near-identity, stage two sharpens towards ``sign``.
- **RBD** (representation distillation): each binarized layer's output is pulled towards the
  full-precision teacher's output for the same input, ``L_d = sum_l mean_i || f_s/|f_s| - f_t/|f_t| ||^2``.
  The teacher is a frozen copy of the model taken before binarization. The term's gradient is added to the
  student's activations during backward (the same as adding ``lambda L_d`` to the loss), so no door has to
  change the user's loss.

``method="sign_ste"`` gives the plain BNN baseline (Hubara et al. 2016): ``sign`` with a clipped
straight-through estimator, no balance, scale or distillation.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from effplug.forward_scope import OutermostForward
from effplug.logs import log_once
from effplug.options import build_config, checks_keywords, name_patterns, require_module
from effplug.quant.convert import LayerPlan, quantized_layers, replace_layers, select_compute_layers
from effplug.quant.coverage import report_coverage
from effplug.quant.quantizer import Quantizer

METHODS = ("dirnet", "sign_ste")
log = logging.getLogger("effplug.quant")


@checks_keywords
@dataclass(frozen=True)
class BinarizationConfig:
    """``method``: ``dirnet`` or ``sign_ste``; ``keep_first_last``: the first and last layers stay in
    floating point (standard BNN practice, as in IR-Net); ``distill_weight``: lambda of RBD (0 turns it off);
    ``t_min``/``t_max``: DTE's schedule end points; ``exclude``: fnmatch name patterns left in float."""

    method: str = "dirnet"
    keep_first_last: bool = True
    binarize_activations: bool = True
    distill_weight: float = 1.0
    t_min: float = 0.1
    t_max: float = 10.0
    exclude: tuple = ()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not supported; use one of {', '.join(METHODS)}")
        if not 0 < self.t_min < self.t_max:
            raise ValueError(f"need 0 < t_min < t_max; got t_min={self.t_min}, t_max={self.t_max}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight={self.distill_weight} must be >= 0 (0 turns distillation off)")
        object.__setattr__(self, "exclude", name_patterns(self.exclude))


class _SignDTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t, k):
        ctx.save_for_backward(x)
        ctx.t, ctx.k = t, k
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.k * ctx.t * (1 - torch.tanh(ctx.t * x) ** 2), None, None


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1)


class SignQuantizer(Quantizer):
    """sign() with DTE or clipped-STE gradients; for weights, IMB's balance/standardize/pow2 scale first."""

    def __init__(self, role: str, method: str, channel_dim: int = 0):
        super().__init__()
        self.role, self.method, self.channel_dim = role, method, channel_dim
        self.bits = 1
        self.t, self.k = 1.0, 1.0
        self.layer_name = ""
        self.nonnegative_input: bool | None = None  # decided on the first batch (activations)

    def extra_repr(self) -> str:
        return f"{self.role}, {self.method}, t={self.t:.3g}, k={self.k:.3g}"

    @torch.no_grad()
    def _check_input_is_signed(self, x) -> None:
        """sign() of a non-negative input (after ReLU) is +1 everywhere: the layer sees a constant and the
        network collapses. Say so once."""
        self.nonnegative_input = bool((x >= 0).all())
        if self.nonnegative_input:
            log_once(log, "binarize-nonnegative",
                     "effplug.quant binarization: the input of %s is never negative (a ReLU before it?), so sign() "
                     "makes it constant and the network loses what it learned. DIR-Net needs activations that "
                     "take both signs: replace ReLU with Hardtanh/PReLU/identity before binarized layers, "
                     "exclude those layers (exclude=[...]), or keep activations in float "
                     "(binarize_activations=False). Reported once.", self.layer_name or "a binarized layer")

    def _sign(self, x):
        return _SignSTE.apply(x) if self.method == "sign_ste" else _SignDTE.apply(x, self.t, self.k)

    def forward(self, x):
        if not self.enabled:
            return x
        if self.role == "act" and self.nonnegative_input is None:
            self._check_input_is_signed(x)
        if self.role == "act" or self.method == "sign_ste":
            return self._sign(x)
        w = x.movedim(self.channel_dim, 0)
        rows = w.reshape(w.shape[0], -1)
        shape = [-1] + [1] * (w.dim() - 1)
        mean = rows.mean(dim=1).reshape(shape)
        std = rows.std(dim=1).clamp_min(1e-8).reshape(shape)
        balanced = (w - mean) / std
        scale = torch.exp2(torch.round(torch.log2(balanced.abs().reshape(w.shape[0], -1).mean(dim=1)))).detach()
        return (self._sign(balanced) * scale.reshape(shape)).movedim(0, self.channel_dim)


def dte_schedule(progress: float, t_min: float, t_max: float) -> tuple[float, float]:
    """DTE's ``(t, k)`` at training progress ``progress`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    t = t_min * 10 ** (p * math.log10(t_max / t_min))
    return t, max(1.0 / t, 1.0)


class Binarizer:
    """Binarize ``model`` in place and run DTE's schedule and RBD's distillation.

    ``engine = Binarizer(model, BinarizationConfig())``; call ``engine.set_progress(step / total)``
    each step (the doors do). ``engine.last_distill_loss`` holds the latest ``L_d``.
    """

    def __init__(self, model: nn.Module, config: BinarizationConfig | None = None, teacher: nn.Module | None = None,
                 **kwargs):
        require_module(model, "Binarizer")
        self.config = build_config(BinarizationConfig, "Binarizer", config, **kwargs)
        self.model = model
        self.teacher = None
        if self.config.method == "dirnet" and self.config.distill_weight > 0:
            # the float model before binarization; pass ``teacher`` when ``model`` cannot be deep-copied
            self.teacher = (teacher if teacher is not None else copy.deepcopy(model)).eval().requires_grad_(False)
        plans = self._plan()
        if not plans:
            raise ValueError("no layers to binarize: nn.Linear/nn.Conv1d/2d/HF Conv1D needed (first and last stay "
                             "in float with keep_first_last=True)")
        self.layer_names = [p.name for p in plans]
        method = self.config.method

        def build(plan, module, cls):
            act = SignQuantizer("act", method) if self.config.binarize_activations else None
            return SignQuantizer("weight", method, cls.weight_channel_dim), act

        replace_layers(model, plans, build)
        self.coverage = model._effplug_coverage = report_coverage(model, "binarization", self.layer_names,
                                                                  self._left_float)
        for name in self.layer_names:
            act = model.get_submodule(name).act_quant
            if act is not None:
                act.layer_name = name
        self.progress = 0.0
        self.last_distill_loss = 0.0
        self._teacher_out: dict = {}
        self._handles = []
        self._scope = OutermostForward(model, self._run_teacher, self._end_forward,
                                       begins=lambda module, args, kwargs: module.training)
        self._distill_sum = None
        self.set_progress(0.0)
        if self.teacher is not None:
            self._attach_distillation()

    def _plan(self) -> list[LayerPlan]:
        names, self._left_float = select_compute_layers(self.model, self.config.exclude, self.config.keep_first_last,
                                                        "binarization")
        return [LayerPlan(n, "", 1, 1 if self.config.binarize_activations else None) for n in names]

    def binarizers(self):
        return [m for m in self.model.modules() if isinstance(m, SignQuantizer)]

    @property
    def t(self) -> float:
        return dte_schedule(self.progress, self.config.t_min, self.config.t_max)[0]

    def set_progress(self, progress: float) -> None:
        """Move DTE's schedule to ``progress`` (fraction of training done)."""
        self.progress = float(progress)
        t, k = dte_schedule(self.progress, self.config.t_min, self.config.t_max)
        for b in self.binarizers():
            b.t, b.k = t, k

    # ---- RBD -----------------------------------------------------------------------------------------
    def _attach_distillation(self) -> None:
        teacher_modules = dict(self.teacher.named_modules())
        for name in self.layer_names:
            self._handles.append(teacher_modules[name].register_forward_hook(self._record_teacher(name)))
        layers = quantized_layers(self.model)
        for name in self.layer_names:
            self._handles.append(layers[name].register_forward_hook(self._pull_towards_teacher(name)))
        self._scope.attach()

    def _run_teacher(self, module, args, kwargs) -> None:
        """The outer forward of the student starts: run the float teacher on the same inputs, once."""
        self._teacher_out = {}
        self._distill_sum = 0.0
        name = self._scope.stack[0]
        teacher = self.teacher.get_submodule(name) if name else self.teacher
        device = next(module.parameters(), torch.empty(0)).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher(*args, **kwargs)

    def _end_forward(self) -> None:
        if self._distill_sum is not None:
            self.last_distill_loss = float(self._distill_sum)

    def _record_teacher(self, name: str):
        def hook(module, args, output):
            self._teacher_out[name] = output.detach()
        return hook

    def _pull_towards_teacher(self, name: str):
        def hook(module, args, output):
            target = self._teacher_out.pop(name, None)
            if target is None or not output.requires_grad or target.shape != output.shape:
                return None
            with torch.enable_grad():
                student = output.detach().float().requires_grad_(True)
                s = student.reshape(student.shape[0], -1)
                t = target.float().reshape(target.shape[0], -1)
                diff = s / s.norm(dim=1, keepdim=True).clamp_min(1e-12) - t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
                loss = self.config.distill_weight * diff.pow(2).sum(dim=1).mean()
                (extra,) = torch.autograd.grad(loss, student)
            self._distill_sum = (self._distill_sum or 0.0) + loss.detach()
            extra = extra.to(output.dtype)
            output.register_hook(lambda grad: grad + extra)
            return None
        return hook

    def detach(self) -> None:
        self._scope.detach()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def state_dict(self) -> dict:
        """DTE's progress and the teacher's weights (a resumed run has no float model to copy)."""
        state = {"progress": torch.tensor(self.progress)}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.set_progress(float(state["progress"]))
        if self.teacher is not None and "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
