"""The activation-compression engine: ``saved_tensors_hooks`` scoped to a model's forward.

``ActivationCompressor(model, config).attach()`` registers forward hooks on every module of ``model``.
When the outermost module call starts (with grad enabled), the engine pushes its pack/unpack hooks; when it
ends, it pops them. So only what autograd saves *inside* the model's forward is touched: a loss computed
outside the model is never compressed, and with ``scope="auto"`` neither is the code in the body of HF
``PreTrainedModel``s, LightningModules and ``nn`` loss modules (HF models compute the loss there).

Each saved tensor is either encoded by the method (``effplug.compress.actnn`` / ``gact`` / ``mesa`` /
``comet`` / ``division``) or kept exact, with the reason reported once at debug level: parameters and views
of them, the batch inputs, integer tensors (bool masks are packed to 1 bit and int64 indices narrowed to the
smallest integer type that holds them, both exact), tensors under
``min_numel``, non-finite values, and tensors a method declines (COMET past its bound).

Correctness details:
- memory saved twice in one forward (the same tensor, or views of it with the same layout, as Llama's
  q/k/v projections save one normalized input) is encoded once and counted once; the identity map holds a
  weak reference, so a recycled storage address can never be served a stale payload, and it is cleared when
  the forward ends;
- a forward recomputed inside backward (HF ``gradient_checkpointing_enable()``, ``torch.utils.checkpoint``)
  is left alone: its tensors live only until their backward, and the real forward's report stands;
- stochastic rounding draws from effplug's own Philox seed stream, never from torch's global RNG;
- unpack restores shape, dtype, device and, for dense tensors in any dimension order, the strides;
- an in-place change to a saved tensor raises at backward, as autograd does without hooks. The version
  counter is read at unpack while the tensor (or its base) is alive, and at the end of the forward for
  temporaries that die there; a change made after the forward to a tensor that then dies before backward
  cannot be seen (its payload, a copy, is still correct).
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch.utils._pytree import tree_leaves

from effplug.codecs import UniformCodec
from effplug.codecs.lossless import (  # noqa: F401  (re-exported)
    BoolPayload,
    NarrowIntPayload,
    RectifiedPayload,
    TwoLevelPayload,
    decode_rectified,
    decode_two_level,
    narrow_int,
    pack_bool,
    two_level,
    unpack_bool,
)
from effplug.compress import actnn, comet, division, gact, mesa
from effplug.compress.calibration import Measurement, measure_gradient_effects  # noqa: F401
from effplug.compress.config import CompressionConfig
from effplug.compress.report import CompressionReport, LayerBytes  # noqa: F401  (re-exported)
from effplug.compress.saved import SavedActivation, _covers_storage, _memory_order, _storage_ptr  # noqa: F401
from effplug.forward_scope import OutermostForward
from effplug.kernels.pack import QuantizedTensor
from effplug.logs import log_once
from effplug.options import build_config
from effplug.profile import saved_bytes
from effplug.sizes import tensor_nbytes
from effplug.state import require_same_config

log = logging.getLogger("effplug.compress")

METHOD_CLASSES = {
    "actnn": actnn.ActNNMethod,
    "gact": gact.GACTMethod,
    "mesa": mesa.MesaMethod,
    "comet": comet.CometMethod,
    "division": division.DivisionMethod,
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_BITS = 8


def build_method(config: CompressionConfig):
    return METHOD_CLASSES[config.method](config)


def is_loss_owner(module: torch.nn.Module) -> bool:
    """Modules whose own forward body may compute a loss: HF PreTrainedModels, LightningModules, nn losses."""
    if isinstance(module, torch.nn.modules.loss._Loss):
        return True
    if hasattr(module, "config") and hasattr(module, "base_model_prefix"):  # transformers.PreTrainedModel
        return True
    return any(c.__name__ == "LightningModule" for c in type(module).__mro__)


def _begins_a_forward(module, args, kwargs) -> bool:
    # no grad, or a forward recomputed inside backward (gradient checkpointing): what it saves is freed
    # moments later, so it stays exact and the real forward's report stands
    return torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1


_ROUND_FLOATS = ("sq_error", "ref_sq_norm", "rel_sq_error")


def _round_state(measurements: list[Measurement] | None, next_slot: int) -> dict | None:
    """A calibration round in progress as plain tensors and ints (None: no round)."""
    if measurements is None:
        return None
    return {"next_slot": next_slot,
            "slots": torch.tensor([m.slot for m in measurements], dtype=torch.int64),
            "numels": torch.tensor([m.numel for m in measurements], dtype=torch.int64),
            **{f: torch.tensor([getattr(m, f) for m in measurements], dtype=torch.float64) for f in _ROUND_FLOATS}}


def _load_round(state: dict | None) -> tuple[list[Measurement] | None, int]:
    if state is None:
        return None, 0
    columns = [state["slots"].tolist(), state["numels"].tolist(), *(state[f].tolist() for f in _ROUND_FLOATS)]
    return [Measurement(*row) for row in zip(*columns, strict=True)], int(state["next_slot"])


class ActivationCompressor:
    """Compress what ``model``'s forward saves for backward. Use ``attach()``/``detach()`` or ``with``."""

    def __init__(self, model: torch.nn.Module, config: CompressionConfig | None = None, **kwargs):
        config = build_config(CompressionConfig, "ActivationCompressor", config, shorthand="method", **kwargs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"ActivationCompressor needs a torch.nn.Module; got {type(model).__name__}")
        self.model, self.config = model, config
        self.method = build_method(config)
        self.forward_count = 0
        self.last_report = CompressionReport()
        self.total_original_bytes = 0
        self.total_held_bytes = 0
        self.calibration_enabled = True
        # the stack holds (qualified name, compress inside this module's own body)
        self._scope = OutermostForward(model, lambda module, args, kwargs: self._start_forward(args, kwargs),
                                       self._end_forward, _begins_a_forward, self._label)
        self._hooks_ctx = None
        self._checkpointing = None
        self._param_ptrs: set[int] = set()
        self._input_ptrs: set[int] = set()
        self._identity: dict = {}
        self._slot = 0
        self._report: CompressionReport | None = None
        self._input_bytes = 0
        self._recording = False
        self._recorded: list[SavedActivation] = []
        self._round: list[Measurement] | None = None  # a calibration round spread over steps: its measurements
        self._round_next = 0  # the first slot the next calibration step probes
        self._probe_slot = -1
        self._reported: set = set()
        self._rectified: dict[int, bool] = {}

    # -- attach / detach ------------------------------------------------------------------------------

    def attach(self) -> ActivationCompressor:
        if self.config.checkpoint and self._checkpointing is None:
            from effplug.compress.checkpointing import BlockCheckpointing

            self._checkpointing = BlockCheckpointing(self.model)
            log_once(log, "checkpointing", "effplug.compress: checkpointing %s; their boundaries are compressed",
                     self._checkpointing.enable(), level=logging.INFO, seen=self._reported)
        self._scope.attach()
        return self

    def detach(self) -> None:
        if self._checkpointing is not None:
            self._checkpointing.disable()
            self._checkpointing = None
        self._scope.detach()
        if self._hooks_ctx is not None:  # detached mid-forward (an exception): never leave hooks pushed
            self._hooks_ctx.__exit__(None, None, None)
            self._hooks_ctx = None

    def __enter__(self) -> ActivationCompressor:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return self._scope.attached

    @property
    def _stack(self) -> list[tuple[str, bool]]:
        return self._scope.stack

    # -- forward scope --------------------------------------------------------------------------------

    def _label(self, name: str, module: torch.nn.Module) -> tuple[str, bool]:
        return name or type(module).__name__, self.config.scope == "model" or not is_loss_owner(module)

    def _start_forward(self, args, kwargs) -> None:
        if self._recorded and self._recording:
            self._warn_once(
                "uncalibrated",
                "a calibration forward was not followed by ActivationCompressor.calibrate(loss) before backward; "
                "that step ran at 8 bits without adapting. Doors call it for you; in a plain loop call engine.calibrate(loss).",
                level=logging.WARNING,
            )
        self._recorded = []
        starts_round = self.forward_count % self.config.recalibrate_every == 0
        self._recording = self.method.needs_calibration and self.calibration_enabled and (
            starts_round or self._round is not None)
        if self._recording and self._round is None:
            self._round, self._round_next = [], 0
        self.forward_count += 1
        self._param_ptrs = {_storage_ptr(p) for p in self.model.parameters()}
        self._param_ptrs |= {_storage_ptr(b) for b in self.model.buffers()}
        self._input_ptrs = {_storage_ptr(t) for t in tree_leaves((args, kwargs))
                            if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        self._identity = {}
        self._slot = 0
        self._input_bytes = 0
        self._report = CompressionReport()
        if torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
            # Someone outside (checkpoint around the whole model, save_on_cpu) already owns the saved tensors.
            self._report_once("outer saved_tensors_hooks", "<model>")
            return
        self._hooks_ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks_ctx.__enter__()

    def _end_forward(self) -> None:
        if self._hooks_ctx is not None:
            self._hooks_ctx.__exit__(None, None, None)
            self._hooks_ctx = None
        for _, saved in self._identity.values():  # temporaries modified in place inside the forward die here
            saved.note_forward_end()
        self._identity = {}
        self._input_ptrs = set()
        if self._report is not None:
            if self.forward_count == 1:
                self._warn_if_nothing_compressed(self._report)
            self.last_report = self._report
            self.total_original_bytes += self._report.original_bytes
            self.total_held_bytes += self._report.held_bytes
            self._report = None

    def _warn_if_nothing_compressed(self, report: CompressionReport) -> None:
        if any(e.compressed for e in report.per_layer.values()):
            return
        kept = dict(report.kept_exact)
        if self._input_bytes:
            kept["batch input"] = self._input_bytes
        reasons = ", ".join(f"{reason} ({nbytes:,} bytes)" for reason, nbytes in kept.items()) or \
            "nothing was saved inside the model's forward"
        log_once(log, "nothing-compressed",
                 "effplug.compress %s: the first forward compressed no saved tensor, so activation memory is "
                 "unchanged; kept exact: %s. Tensors under min_numel=%d stay exact: lower min_numel to compress "
                 "small activations (scope='model' also covers the body of HF models and LightningModules).",
                 self.config.method, reasons, self.config.min_numel, seen=self._reported)

    # -- pack / unpack --------------------------------------------------------------------------------

    def _report_once(self, reason: str, layer: str) -> None:
        log_once(log, f"exact:{reason}:{layer}", "effplug.compress keeps saved tensors exact in %s: %s", layer,
                 reason, level=logging.DEBUG, seen=self._reported)

    def _warn_once(self, key: str, message: str, level=logging.INFO) -> None:
        log_once(log, key, "%s", message, level=level, seen=self._reported)

    def _keep(self, t: torch.Tensor, layer: str, reason: str | None, count: bool = True) -> SavedActivation:
        saved = SavedActivation(t)
        saved.exact = t
        if reason is not None:
            self._report_once(reason, layer)
        if count and self._report is not None:
            nbytes = tensor_nbytes(t)
            self._report.add(layer, nbytes, nbytes, compressed=False)
            if reason is not None:
                self._report.kept_exact[reason] = self._report.kept_exact.get(reason, 0) + nbytes
        return saved

    def _pack(self, t: torch.Tensor):
        if not self._stack:  # packed outside a forward (double backward): leave it alone
            return self._keep(t, "<outside>", None, count=False)
        layer, compress_own_body = self._stack[-1]
        if t.layout != torch.strided:  # a sparse adjacency (GCN) or nested tensor: no storage to quantize
            return self._keep(t, layer, f"{t.layout} layout", count=False)
        ptr = _storage_ptr(t)
        if ptr in self._param_ptrs:
            return self._keep(t, layer, None, count=False)
        if ptr in self._input_ptrs:
            self._input_bytes += tensor_nbytes(t)  # not activations: outside the report's totals
            return self._keep(t, layer, "batch input", count=False)
        whole = _covers_storage(t)
        if whole:  # any dense view of one whole storage (a reshape, a transpose) can share one payload
            key = ("storage", ptr, t.untyped_storage().nbytes(), t.dtype, t._version)
        else:
            key = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, t._version)
        hit = self._identity.get(key)
        if hit is not None and hit[0]() is not None:
            # The same memory saved again (q/k/v_proj each save a fresh view of one normalized input): while the
            # tensor that owns the storage lives, its address cannot be recycled, so the same bytes get one payload,
            # counted once.
            first = hit[1]
            if not whole or (first.shape == t.shape and first.order == _memory_order(t)):
                return first
            if first.payload is not None:
                return first.alias(t)
            return self._keep(t, layer, None, count=False)
        saved = self._pack_new(t, layer, compress_own_body)
        self._identity[key] = (weakref.ref(t if t._base is None else t._base), saved)
        return saved

    def _pack_new(self, t: torch.Tensor, layer: str, compress_own_body: bool) -> SavedActivation:
        if not compress_own_body:
            return self._keep(t, layer, "loss scope (body of a model that may compute its loss)")
        if t.dtype == torch.bool and self.config.pack_bool and t.numel() >= self.config.min_numel:
            saved = SavedActivation(t)
            saved.payload = pack_bool(t)
            self._report.add(layer, t.numel(), saved.payload.nbytes, compressed=True)
            return saved
        if t.dtype not in FLOAT_DTYPES:
            if t.dtype in (torch.int64, torch.int32) and t.numel() >= self.config.min_numel:
                narrowed = narrow_int(t)
                if narrowed is not None:
                    saved = SavedActivation(t)
                    saved.payload = narrowed
                    self._report.add(layer, tensor_nbytes(t), narrowed.nbytes, compressed=True)
                    return saved
            return self._keep(t, layer, f"{t.dtype} is stored losslessly")
        if t.numel() < self.config.min_numel:
            return self._keep(t, layer, f"under min_numel={self.config.min_numel}")
        slot = self._slot
        self._slot += 1
        order = _memory_order(t)
        dense = t.permute(order) if order is not None else t.contiguous()
        if dense.device.type == "cpu" and self._is_rectified(slot, dense):
            # CPU dropout saves a float {0, 1/(1-p)} mask; on CUDA it is a bool mask and takes the path above.
            # The check is a host sync, which costs nothing on CPU.
            mask = two_level(dense)
            if mask is not None:
                saved = SavedActivation(t, slot)
                saved.payload, saved.order = mask, order
                self._report.add(layer, tensor_nbytes(t), mask.nbytes, compressed=True)
                return saved
        probed = self._recording and self._probes_slot(slot)
        try:
            payload = self._reference_encode(dense, slot) if probed else self._encode(dense, slot)
        except ValueError:  # non-finite values: the quantizer refuses rather than corrupt them
            payload = None
        if payload is None:
            default = f"{self.config.method} could not encode it within its guarantees"
            reason = self.method.decline_reason or default
            return self._keep(t, layer, reason)
        saved = SavedActivation(t, slot)
        saved.payload, saved.order = payload, order
        self._report.add(layer, tensor_nbytes(t), payload.nbytes, compressed=True)
        if probed:
            self._recorded.append(saved)
        return saved

    def _reference_encode(self, dense: torch.Tensor, slot: int):
        """What a calibration forward holds: 8 bits, nearest (GACT's reference width), not the exact tensor,
        so a calibration step needs a quarter of the uncompressed memory rather than all of it."""
        reference = UniformCodec(REFERENCE_BITS, self.config.group_size, stochastic=False, scale_dtype=torch.bfloat16)
        payload = reference.encode(dense, allow_nonfinite=dense.device.type != "cpu")
        if self._is_rectified(slot, dense):
            payload = RectifiedPayload(pack_bool(dense, positive=True), payload)
        return payload

    def _is_rectified(self, slot: int, dense: torch.Tensor) -> bool:
        # Decided once per slot (a host sync the first time only): ReLU outputs stay ReLU outputs.
        if slot not in self._rectified:
            self._rectified[slot] = self.config.preserve_zeros and bool(dense.min() == 0)
        return self._rectified[slot]

    def _encode(self, dense: torch.Tensor, slot: int, probe: bool = False):
        payload = self.method.probe(dense, slot) if probe else self.method.encode(dense, slot)
        if payload is not None and self._is_rectified(slot, dense):
            payload = RectifiedPayload(pack_bool(dense, positive=True), payload)
        return payload

    def _decode_inner(self, payload) -> torch.Tensor:
        if isinstance(payload, QuantizedTensor):  # every method's uniform payloads, and calibration references
            return UniformCodec.decode(payload)
        return self.method.decode(payload)

    def _decode(self, payload, dtype: torch.dtype) -> torch.Tensor:
        if not isinstance(payload, RectifiedPayload):
            return self._decode_inner(payload)
        inner = self._decode_inner(payload.inner)
        return decode_rectified(payload.mask, inner).view(inner.shape)

    def _restore(self, saved: SavedActivation, dense: torch.Tensor) -> torch.Tensor:
        if saved.order is None:
            return dense.view(saved.shape)
        inverse = [0] * len(saved.order)
        for i, d in enumerate(saved.order):
            inverse[d] = i
        return dense.permute(inverse)

    def _unpack(self, saved):
        saved.check_version()
        if saved.exact is not None:
            return saved.exact
        if isinstance(saved.payload, BoolPayload):
            return unpack_bool(saved.payload)
        if isinstance(saved.payload, NarrowIntPayload):
            return saved.payload.data.to(saved.payload.dtype)
        dense = self._decode_dense(saved)
        if saved.slot == self._probe_slot >= 0:  # calibration: this one tensor through the method itself
            probed = self._encode(dense, saved.slot, probe=True)
            if probed is not None:
                dense = self._decode(probed, saved.dtype).view(dense.shape)
        return self._restore(saved, dense)

    def _decode_dense(self, saved: SavedActivation) -> torch.Tensor:
        if isinstance(saved.payload, TwoLevelPayload):
            p = saved.payload
            out = decode_two_level(p)
        else:
            out = self._decode(saved.payload, saved.dtype)
        if saved.order is not None:
            out = out.view([saved.shape[d] for d in saved.order])
        return out

    # -- calibration (GACT sensitivities, COMET bounds) -------------------------------------------------

    def _set_probe(self, slot: int) -> None:
        self._probe_slot = slot

    def _probes_slot(self, slot: int) -> bool:
        k = self.config.probes_per_step
        return k is None or self._round_next <= slot < self._round_next + k

    @property
    def calibration_pending(self) -> bool:
        return self._recording

    def calibrate(self, loss: torch.Tensor) -> bool:
        """Measure saved tensors' effect on the gradient of ``loss`` (before ``loss.backward()``).

        On a calibration forward the next ``probes_per_step`` saved tensors are held at 8 bits (nearest) and
        the others go through the method as usual. This runs one backward with those references and one per
        probed tensor with only that tensor re-encoded by the method, on the retained graph (no extra forward);
        the other tensors decode identically in both, so the difference is that tensor's alone. When every
        tensor of the forward has been measured, the method adapts to the round. Returns False when this
        forward was not a calibration one.
        """
        if not self._recording:
            return False
        if self._recorded:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self._round.extend(measure_gradient_effects(loss, params, self._recorded, self._set_probe))
        k = self.config.probes_per_step
        if k is not None and self._round_next == 0 and self._slot > k:
            steps = -(-self._slot // k)
            self._warn_once(
                "spread-round",
                f"effplug.compress {self.config.method}: a calibration round covers {self._slot} saved tensors at "
                f"probes_per_step={k}, so it spans {steps} steps; until it completes the method keeps its current "
                f"settings. Raise probes_per_step (each adds one backward to a calibration step) or set it to None "
                f"(the whole round in one step) to adapt sooner.",
                level=logging.WARNING if steps > self.config.recalibrate_every // 4 else logging.INFO)
        self._round_next += k or self._slot
        complete = self._round_next >= self._slot  # every slot of this forward measured
        if self._round and (complete or self.method.adapts_per_tensor):
            self.method.calibrate(self._round)
            self._round = [] if not complete else None
        elif complete:
            self._round = None
        self._recorded = []
        self._recording = False
        return True

    # -- state ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "forward_count": self.forward_count,
            "method": self.method.state_dict(),
            "calibration_round": _round_state(self._round, self._round_next),
        }

    def load_state_dict(self, state: dict) -> None:
        keys = ("method", "bits", "group_size", "stochastic")  # what changes the method's state or its meaning
        require_same_config("activation compression", {k: state["config"].get(k) for k in keys},
                            {k: getattr(self.config, k) for k in keys})
        self.forward_count = int(state["forward_count"])
        self.method.load_state_dict(state["method"])
        self._round, self._round_next = _load_round(state.get("calibration_round"))

    def step_saved_bytes(self, step) -> tuple[int, int]:
        """Saved-for-backward bytes of ``step()`` (a forward and its loss) without and with compression.

        The exact meter counts the whole step, loss included; with compression, what the engine compressed is
        swapped for what it held. With ``checkpoint=True`` both are measured checkpointed, so "exact" is what
        the checkpointed model saves uncompressed. One forward each, no calibration; attachment is left as it was.
        """
        was_attached, was_enabled = self.attached, self.calibration_enabled
        self.detach()
        if self.config.checkpoint:
            from effplug.compress.checkpointing import BlockCheckpointing

            measuring = BlockCheckpointing(self.model)
            measuring.enable()
            try:
                exact = saved_bytes(step, parameters=self.model).activation_bytes
            finally:
                measuring.disable()
        else:
            exact = saved_bytes(step, parameters=self.model).activation_bytes
        self.calibration_enabled = False
        with self:
            step()
        self.calibration_enabled = was_enabled
        if was_attached:
            self.attach()
        report = self.last_report
        return exact, exact - report.original_bytes + report.held_bytes

    def summary(self) -> dict:
        """Bytes of the last forward, for logs: original, held, ratio."""
        r = self.last_report
        out = {"saved_original_bytes": r.original_bytes, "saved_held_bytes": r.held_bytes, "saved_ratio": r.ratio}
        out.update(self.method.summary())
        return out
