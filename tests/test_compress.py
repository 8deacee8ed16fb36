"""The activation-compression engine and its methods, against uncompressed runs on the same batch."""

import io

import pytest
import torch
from torch import nn

from effplug.compress import ActivationCompressor, CompressionConfig, compressed_activations
from effplug.compress.comet import CometMethod
from effplug.compress.division import division_nbytes
from effplug.compress.gact import allocate_bits
from effplug.compress.mesa import MesaMethod
from effplug.data import digits
from effplug.kernels.pack import packed_nbytes
from effplug.models import DigitsResNet

F = nn.functional


@pytest.fixture(scope="module")
def digits_batch():
    split = digits()
    return split.train_x[:256], split.train_y[:256]


def _grads(model, loss_fn, **engine_kwargs):
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks in every run
    if engine_kwargs:
        with compressed_activations(model, **engine_kwargs) as engine:
            loss = loss_fn()
            engine.calibrate(loss)
            loss.backward()
    else:
        engine = None
        loss_fn().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, engine


def _cosines(a, b):
    """Per-parameter cosine, skipping gradients that are zero in exact arithmetic (BERT's key bias)."""
    top = max(float(g.norm()) for g in b.values())
    return {n: float(F.cosine_similarity(a[n].flatten(), b[n].flatten(), dim=0)) for n in b if b[n].norm() > 1e-6 * top}


def _global_cosine(a, b):
    return float(F.cosine_similarity(torch.cat([a[n].flatten() for n in b]), torch.cat([b[n].flatten() for n in b]), dim=0))


# -- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bits=3), "bits=3 is not supported; use one of 1, 2, 4, 8"),
        (dict(method="jpeg"), "method='jpeg' is not supported"),
        (dict(method="gact", bits=9), "target average from 1 to 8"),
        (dict(group_size=100), "group_size=100"),
        (dict(scope="everything"), "scope="),
        (dict(method="comet", error_bound=0), "error_bound=0"),
        (dict(min_numel=0), "min_numel=0"),
        (dict(method="gact", sensitivity="fisher"), "sensitivity='fisher'"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompressionConfig(**kwargs)


def test_engine_rejects_non_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ActivationCompressor(lambda x: x)


# -- gradient fidelity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, bits, threshold",
    [("actnn", 8, 0.999), ("actnn", 4, 0.99), ("mesa", 8, 0.999), ("division", 4, 0.99), ("gact", 4, 0.99)],
)
def test_digits_resnet_gradient_fidelity(digits_batch, method, bits, threshold):
    x, y = digits_batch
    torch.manual_seed(0)
    model = DigitsResNet()
    loss_fn = lambda: F.cross_entropy(model(x), y)
    ref, _ = _grads(model, loss_fn)
    got, engine = _grads(model, loss_fn, method=method, bits=bits, seed=0, recalibrate_every=10**6)
    if method == "gact":  # the first forward calibrates (exact); the second uses the allocation
        got, _ = _grads_with(engine, model, loss_fn)
    cos = _cosines(got, ref)
    worst = min(cos, key=cos.get)
    assert cos[worst] >= threshold, (worst, cos[worst])
    assert engine.last_report.held_bytes < engine.last_report.original_bytes / 2


def _grads_with(engine, model, loss_fn):
    model.zero_grad()
    with engine:
        loss = loss_fn()
        engine.calibrate(loss)
        loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, engine


def test_stochastic_rounding_is_unbiased(digits_batch):
    """The mean gradient over seeds approaches the exact one (error falls like 1/sqrt(draws))."""
    x, y = digits_batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))
    loss_fn = lambda: F.cross_entropy(model(x), y)
    ref, _ = _grads(model, loss_fn)
    draws = [_grads(model, loss_fn, bits=2, seed=s)[0] for s in range(16)]
    flat = lambda g: torch.cat([g[n].flatten() for n in ref])
    single = (flat(draws[0]) - flat(ref)).norm()
    mean = (torch.stack([flat(d) for d in draws]).mean(0) - flat(ref)).norm()
    assert mean < 0.45 * single, (float(mean), float(single))  # 1/sqrt(16) = 0.25 if unbiased


# -- accounting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_held_bytes_match_the_analytic_ratio(bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 8))
    x = torch.randn(128, 96)
    with compressed_activations(model, bits=bits, seed=0) as engine:
        model(x).sum().backward()
    report = engine.last_report
    # each GELU saves its input and the next Linear saves the GELU output; x is the batch input, kept out
    numels = [128 * 512] * 4
    assert report.original_bytes == sum(n * 4 for n in numels)
    analytic = sum(packed_nbytes(n, bits, 128, torch.bfloat16) for n in numels)
    assert abs(report.held_bytes - analytic) / analytic < 0.05
    assert "0" not in report.per_layer  # the first Linear saves only the batch input and its weight
    assert report.per_layer["1"].compressed == 1
    assert "total" in report.table()


def test_division_bytes_match_analytic():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 3, padding=1))
    x = torch.randn(8, 3, 16, 16)
    with compressed_activations(model, method="division", bits=2, seed=0) as engine:
        model(x).sum().backward()
    analytic = 2 * division_nbytes((8, 16, 16, 16), 2, 128, 8)
    assert abs(engine.last_report.held_bytes - analytic) / analytic < 0.05


def test_what_stays_exact_and_is_not_counted():
    """Parameters and batch inputs are not activations; ints stay lossless; bool masks pack to 1 bit."""

    class KeepPositive(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h):
            mask = h > 0
            ctx.save_for_backward(mask)
            return h * mask

        @staticmethod
        def backward(ctx, grad):
            (mask,) = ctx.saved_tensors
            return grad * mask

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 64)

        def forward(self, x, idx):
            return torch.gather(KeepPositive.apply(self.lin(x)), 1, idx)  # gather saves the int64 index

    torch.manual_seed(0)
    net = Net()
    x, idx = torch.randn(64, 64), torch.randint(0, 64, (64, 64))
    with compressed_activations(net, bits=4, seed=0, preserve_zeros=False) as engine:
        net(x, idx).sum().backward()
    r = engine.last_report
    assert r.kept_exact == {}  # idx is a batch input; the weight is a parameter; x is a batch input
    # the bool mask at 1 bit, and the float input gather saves (for its shape) at 4 bits
    assert r.per_layer["Net"].held == 64 * 64 // 8 + packed_nbytes(64 * 64, 4, 128, torch.bfloat16)
    grads_ref = torch.autograd.grad(Net.forward(net, x, idx).sum(), net.lin.weight)[0]
    assert torch.allclose(net.lin.weight.grad, grads_ref)


# -- correctness details ---------------------------------------------------------------------------------


def test_loss_inside_hf_forward_stays_exact():
    from effplug.models import tiny_gpt2

    torch.manual_seed(0)
    model = tiny_gpt2(attn_implementation="eager")
    ids = torch.randint(0, 128, (4, 32))
    with compressed_activations(model, bits=2, seed=0) as engine:
        model(input_ids=ids, labels=ids).loss.backward()
    kept = engine.last_report.kept_exact
    loss_bytes = 4 * 31 * 128 * 4  # the log-softmax of the shifted logits
    assert kept["loss scope (body of a model that may compute its loss)"] >= loss_bytes
    assert engine.last_report.per_layer["lm_head"].compressed == 1


def test_inplace_change_after_save_still_raises():
    class Net(nn.Module):
        def forward(self, x):
            y = x * 2
            z = y.sin()  # saves y
            y.add_(1)  # in place after the save; y outlives the forward
            return z, y

    x = torch.randn(64, 64, requires_grad=True)
    for bits in (8, 2):
        net = Net()
        with compressed_activations(net, bits=bits, min_numel=1):
            z, y = net(x)
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                (z.sum() + y.sum()).backward()


def test_inplace_change_of_a_dead_temporary_uses_the_values_the_op_saw():
    """Autograd would refuse; the payload is a copy taken at save time, so the gradient is still right."""

    class Net(nn.Module):
        def forward(self, x):
            y = x * 2
            z = y.sin()
            y.add_(1)
            return z

    x = torch.randn(64, 64, requires_grad=True)
    net = Net()
    with compressed_activations(net, bits=8, min_numel=1):
        (grad,) = torch.autograd.grad(net(x).sum(), x)
    exact = 2 * torch.cos(2 * x.detach())
    assert F.cosine_similarity(grad.flatten(), exact.flatten(), dim=0) > 0.999


def test_unpack_restores_shape_dtype_device_and_strides():
    seen = {}

    class SaveTransposed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            t = a.t()  # a non-contiguous, dense view
            ctx.save_for_backward(t)
            seen["forward"] = (t.shape, t.stride(), t.dtype, t.device)
            return a * 1.0

        @staticmethod
        def backward(ctx, grad):
            (t,) = ctx.saved_tensors
            seen["backward"] = (t.shape, t.stride(), t.dtype, t.device)
            return grad

    class Net(nn.Module):
        def forward(self, x):
            return SaveTransposed.apply(x * 3)

    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(48, 80, dtype=dtype, requires_grad=True)
        with compressed_activations(Net(), bits=8) as engine:
            engine.model(x).sum().backward()
        assert seen["forward"] == seen["backward"]
        assert engine.last_report.per_layer["Net"].compressed == 1


def test_recycled_address_is_never_served_a_stale_payload():
    class Net(nn.Module):
        def forward(self, x):
            outs = []
            for k in range(6):  # each temporary dies right after its save; the allocator reuses addresses
                a = x * (k + 1)
                outs.append(a.sin())
                del a
            return sum(outs)

    x = torch.randn(128, 128, requires_grad=True)
    exact = torch.autograd.grad(Net()(x).sum(), x)[0]
    net = Net()
    with compressed_activations(net, bits=8, seed=0):
        got = torch.autograd.grad(net(x).sum(), x)[0]
    assert F.cosine_similarity(got.flatten(), exact.flatten(), dim=0) > 0.999


def test_duplicate_saves_are_encoded_once():
    class Net(nn.Module):
        def forward(self, x):
            h = x * 2
            return h.sin() + h.cos()  # both save h

    x = torch.randn(64, 64, requires_grad=True)
    with compressed_activations(Net(), bits=4) as engine:
        engine.model(x).sum().backward()
    assert engine.last_report.per_layer["Net"].tensors == 1


def test_global_rng_and_dropout_streams_are_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Dropout(0.5), nn.Linear(256, 256), nn.Dropout(0.5), nn.Linear(256, 4))
    x = torch.randn(64, 64)
    torch.manual_seed(7)
    exact_out = model(x)
    exact_state = torch.get_rng_state()
    torch.manual_seed(7)
    with compressed_activations(model, bits=2):
        out = model(x)
        out.sum().backward()
    assert torch.equal(out, exact_out)  # same dropout masks; forward values are never touched
    assert torch.equal(torch.get_rng_state(), exact_state)


def test_relu_sign_pattern_survives_two_bits():
    """ReLU backward uses only ``output > 0``; the 1-bit sign mask keeps it exact even at 2 bits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4))
    x = torch.randn(128, 64)
    loss_fn = lambda: F.mse_loss(model(x), torch.zeros(128, 4))
    ref, _ = _grads(model, loss_fn)
    got, _ = _grads(model, loss_fn, bits=2, seed=0)
    # the first bias sees the compressed tensors only through the ReLU mask (the last weight is exact)
    assert torch.allclose(got["0.bias"], ref["0.bias"], rtol=1e-5, atol=1e-7)
    got_no_mask, _ = _grads(model, loss_fn, bits=2, seed=0, preserve_zeros=False)
    assert not torch.allclose(got_no_mask["0.bias"], ref["0.bias"], rtol=1e-5, atol=1e-7)


# -- methods ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, bound", [("abs", 1e-3), ("abs", 0.05), ("rel", 1e-2), ("rel", 1e-4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_comet_error_bound_holds_on_every_element(mode, bound, dtype):
    method = CometMethod(CompressionConfig(method="comet", error_bound=bound, error_mode=mode))
    gen = torch.Generator().manual_seed(0)
    for x in (torch.randn(5000, generator=gen) * 3, torch.rand(64, 77, generator=gen) ** 4, torch.randn(999, generator=gen) * 1e3):
        x = x.to(dtype)
        payload = method.encode(x, 0)
        eb = bound if mode == "abs" else bound * float(x.float().max() - x.float().min())
        if payload is None:  # declined: the engine keeps it exact, which meets any bound
            continue
        err = (method.decode(payload).float() - x.float()).abs().max()
        assert err <= eb, (float(err), eb)
        assert payload.nbytes < x.numel() * x.element_size() or payload.width == 16


def test_comet_declines_what_it_cannot_bound():
    method = CometMethod(CompressionConfig(method="comet", error_bound=1e-9, error_mode="abs"))
    assert method.encode(torch.randn(4096) * 1e4, 0) is None


def test_comet_adapts_per_tensor_bounds_in_training(digits_batch):
    x, y = digits_batch
    torch.manual_seed(0)
    model = DigitsResNet()
    loss_fn = lambda: F.cross_entropy(model(x), y)
    engine = ActivationCompressor(model, method="comet", error_bound=0.05, grad_tolerance=0.01, recalibrate_every=1,
                                  probes_per_step=None)
    for _ in range(3):
        _grads_with(engine, model, loss_fn)
    assert engine.method.calibrations == 3
    assert max(engine.method.tightening.values()) >= 1  # a 5% bound is too loose for 1% gradient error somewhere
    state = _roundtrip(engine.state_dict())
    fresh = ActivationCompressor(model, method="comet", error_bound=0.05)
    fresh.load_state_dict(state)
    assert fresh.method.tightening == engine.method.tightening


def test_gact_allocation_meets_budget_and_prefers_insensitive_tensors():
    bits = allocate_bits([1.0, 100.0, 1e-3, 10.0], [1000, 1000, 1000, 1000], 4)
    assert sum(bits) / 4 <= 4
    assert bits[2] <= bits[0] <= bits[3] <= bits[1]
    assert allocate_bits([1.0, 1.0], [10, 10], 8) == [8, 8]
    mixed = allocate_bits([5.0, 1.0, 0.2], [100, 3000, 50], 2.5)
    assert sum(b * n for b, n in zip(mixed, [100, 3000, 50], strict=False)) <= 2.5 * 3150


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_gact_calibrates_and_its_state_survives_a_checkpoint(digits_batch):
    x, y = digits_batch
    torch.manual_seed(0)
    model = DigitsResNet()
    loss_fn = lambda: F.cross_entropy(model(x), y)
    engine = ActivationCompressor(model, method="gact", bits=2, recalibrate_every=2, probes_per_step=None)
    _grads_with(engine, model, loss_fn)  # calibration forward
    assert engine.method.calibrations == 1
    assert engine.method.average_bits() <= 2.0
    assert len(set(engine.method.allocation.tolist())) > 1  # adaptive, not uniform
    _grads_with(engine, model, loss_fn)  # compressed with the allocation
    assert engine.last_report.ratio > 6
    state = _roundtrip(engine.state_dict())
    resumed = ActivationCompressor(model, method="gact", bits=2, recalibrate_every=2, probes_per_step=None)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.method.allocation, engine.method.allocation)
    assert resumed.forward_count == 2
    with pytest.raises(ValueError, match="trained with .*method='gact'.*this run has .*method='actnn'"):
        ActivationCompressor(model, method="actnn").load_state_dict(state)


def test_gact_without_calibrate_call_warns_and_runs(digits_batch, caplog):
    x, y = digits_batch
    model = DigitsResNet()
    with compressed_activations(model, method="gact", bits=4, recalibrate_every=1):
        for _ in range(2):
            F.cross_entropy(model(x), y).backward()
    assert "calibrate(loss)" in caplog.text


def test_mesa_stores_values_beyond_the_running_range_without_saturating():
    # The paper saturates them; a saved log_softmax output (backward uses exp(output)) cannot afford it.
    method = MesaMethod(CompressionConfig(method="mesa", bits=8, stochastic=False, ema_decay=0.9))
    base = torch.rand(32, 16)  # in [0, 1)
    method.encode(base, 0)
    spike = base.clone()
    spike[0, 0] = 50.0  # far outside the running range
    payload = method.encode(spike, 0)
    out = method.decode(payload)
    hi = float(method.shift["0"][0] + method.clip["0"][0])
    assert hi < 10  # the running range follows eq. 4-5: one spike moves it by (1 - decay) only
    assert abs(float(out[0, 0]) - 50.0) <= float(payload.step[0])  # within one step, not clamped at hi
    assert ((out - spike).abs() <= payload.step[None, :] / 2 + 1e-5).all()  # nearest: half a step everywhere
    assert _roundtrip(method.state_dict())["shift"]["0"].shape == (16,)


def test_mesa_groups_per_head_for_attention_tensors():
    method = MesaMethod(CompressionConfig(method="mesa", bits=8))
    q = torch.randn(2, 4, 16, 8) * torch.tensor([1.0, 10.0, 100.0, 0.1]).view(1, 4, 1, 1)
    payload = method.encode(q, 0)
    assert payload.low.shape == (4,) and payload.step.shape == (4,)  # one per head
    rel = (method.decode(payload) - q).abs().amax(dim=(0, 2, 3)) / q.abs().amax(dim=(0, 2, 3))
    assert (rel < 0.02).all()


# -- composition ---------------------------------------------------------------------------------------


def test_bf16_autocast(digits_batch):
    x, y = digits_batch
    torch.manual_seed(0)
    model = DigitsResNet()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = _grads(model, lambda: F.cross_entropy(model(x), y))
        got, engine = _grads(model, lambda: F.cross_entropy(model(x), y), bits=8, seed=0)
    assert _global_cosine(got, ref) > 0.999
    assert engine.last_report.ratio > 2


def test_activation_checkpointing_composes(digits_batch):
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(DigitsResNet):
        def forward(self, x):
            x = checkpoint(self.stem, x, use_reentrant=False)
            x = checkpoint(self.stage1, x, use_reentrant=False)
            x = self.stage2(self.pool(x))
            return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    x, y = digits_batch
    torch.manual_seed(0)
    plain = DigitsResNet()
    ckpt = Checkpointed()
    ckpt.load_state_dict(plain.state_dict())
    ref, plain_engine = _grads(plain, lambda: F.cross_entropy(plain(x), y), bits=8, seed=0)
    got, engine = _grads(ckpt, lambda: F.cross_entropy(ckpt(x), y), bits=8, seed=0)
    assert _global_cosine(got, ref) > 0.999
    # checkpointed blocks keep their own inner tensors; only boundaries reach the engine
    assert engine.last_report.original_bytes < plain_engine.last_report.original_bytes


def test_gradient_accumulation_matches_one_big_batch(digits_batch):
    x, y = digits_batch
    torch.manual_seed(0)
    model = DigitsResNet()
    model.eval()  # BatchNorm in eval: the two halves add up to the full batch exactly
    ref, _ = _grads(model, lambda: F.cross_entropy(model(x), y))
    model.zero_grad()
    with compressed_activations(model, bits=8, seed=0) as engine:
        losses = [F.cross_entropy(model(xb), yb) / 2 for xb, yb in zip(x.chunk(2), y.chunk(2), strict=False)]
        for loss in losses:  # both forwards before any backward: payloads of both stay alive
            loss.backward()
    got = {n: p.grad for n, p in model.named_parameters()}
    assert _global_cosine(got, ref) > 0.999
    assert engine.forward_count == 2


@pytest.mark.parametrize(
    "build, attn",
    [("tiny_gpt2", "eager"), ("tiny_gpt2", "sdpa"), ("tiny_llama", "eager"), ("tiny_llama", "sdpa"), ("tiny_bert", "sdpa")],
)
def test_hf_models_gradient_fidelity(build, attn):
    from effplug import models

    torch.manual_seed(0)
    model = getattr(models, build)(attn_implementation=attn)
    ids = torch.randint(0, 128, (4, 48))
    labels = ids if build != "tiny_bert" else torch.randint(0, 2, (4,))
    loss_fn = lambda: model(input_ids=ids, labels=labels).loss
    ref, _ = _grads(model, loss_fn)
    got8, engine = _grads(model, loss_fn, bits=8, seed=0)
    cos8 = _cosines(got8, ref)
    assert min(cos8.values()) >= 0.999, min(cos8, key=cos8.get)
    got4, _ = _grads(model, loss_fn, bits=4, seed=0)
    assert _global_cosine(got4, ref) >= 0.99
    assert engine.last_report.ratio > 3
    if build == "tiny_gpt2":  # tied input/output embeddings: one parameter, both uses stay exact
        assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("method", ["actnn", "division"])
def test_triton_and_torch_paths_give_identical_gradients(use_backend, method):
    """Same seed, same codes: the engine is bit-identical on the Triton kernels (interpreter on CPU)."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(512, 4))
    x = torch.randn(16, 2, 8, 8)
    loss_fn = lambda: model(x).square().mean()
    grads = {}
    for backend in ("torch", "triton"):
        use_backend(backend)
        grads[backend], _ = _grads(model, loss_fn, method=method, bits=2, seed=3)
    for name in grads["torch"]:
        assert torch.equal(grads["torch"][name], grads["triton"][name]), name


def test_cpu_dropout_float_masks_are_stored_exactly_at_one_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.Dropout(0.3), nn.Linear(512, 4))
    x = torch.randn(64, 64)
    loss_fn = lambda: model(x).square().mean()
    ref, _ = _grads(model, loss_fn)
    got, engine = _grads(model, loss_fn, bits=2, seed=0)
    assert torch.allclose(got["0.bias"], ref["0.bias"], rtol=1e-5, atol=1e-7)  # mask and scale exact
    layer = engine.last_report.per_layer["1"]
    assert layer.held == 64 * 512 // 8 + 4  # 1 bit per element plus the constant


def test_gact_allocation_is_indexed_by_slot_when_some_slots_are_lossless():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Dropout(0.3), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 4))
    x = torch.randn(64, 64)
    engine = ActivationCompressor(model, method="gact", bits=2, recalibrate_every=100, probes_per_step=None)
    _grads_with(engine, model, lambda: model(x).square().mean())
    probed = engine.method.numels > 0
    assert probed.sum() == 4 and not probed.all()  # the dropout mask's slot was stored losslessly
    assert engine.method.average_bits() <= 2


def test_step_saved_bytes_swaps_what_the_engine_compressed(digits_batch):
    from effplug.profile import saved_bytes

    x, y = digits_batch
    model = DigitsResNet()
    step = lambda: F.cross_entropy(model(x), y)
    engine = ActivationCompressor(model, bits=4, seed=0).attach()
    exact, compressed = engine.step_saved_bytes(step)
    report = engine.last_report
    assert compressed == exact - report.original_bytes + report.held_bytes
    assert exact / compressed > 5
    assert engine.attached  # left as it was
    engine.detach()
    assert exact == saved_bytes(step, parameters=model).activation_bytes


# ---- no silent damage: Mesa's ranges, gradient checkpointing, one payload per storage ------------------

def test_mesa_8bit_keeps_a_log_softmax_gradient_after_its_range_moved():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.LogSoftmax(dim=-1))
    x, y = torch.randn(64, 16), torch.randint(0, 64, (64,))
    engine = ActivationCompressor(model, method="mesa", bits=8, seed=0).attach()
    F.nll_loss(model(x), y).backward()  # the running range starts here
    engine.detach()
    exact, _ = _grads(model, lambda: F.nll_loss(model(4 * x), y))  # logits 4x wider: log_softmax far lower
    model.zero_grad()
    with engine:
        F.nll_loss(model(4 * x), y).backward()
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    want = torch.cat([g.flatten() for g in exact.values()])
    assert float(F.cosine_similarity(got, want, dim=0)) >= 0.999


def test_gradient_checkpointing_keeps_the_real_forwards_report(caplog):
    from effplug.models import tiny_gpt2

    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=64, n_positions=32)
    model.gradient_checkpointing_enable()
    model.train()
    ids = torch.randint(0, 64, (4, 32))
    engine = ActivationCompressor(model, method="gact", bits=4, recalibrate_every=1, scope="model").attach()
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        engine.calibrate(loss)
        report = engine.last_report.original_bytes
        loss.backward()
    engine.detach()
    assert engine.forward_count == 2  # the recomputed blocks are not forwards
    assert report > 0 and engine.last_report.original_bytes == report  # backward's recompute left it alone
    assert "calibrate(loss)" not in caplog.text


def test_torch_checkpoint_recompute_is_left_exact():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    outer = nn.Sequential(nn.Linear(32, 32), nn.GELU())
    x = torch.randn(16, 32)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.outer, self.inner = outer, inner

        def forward(self, x):
            return torch.utils.checkpoint.checkpoint(self.inner, self.outer(x), use_reentrant=False).sum()

    net = Net()
    engine = ActivationCompressor(net, method="actnn", bits=8, min_numel=1).attach()
    net(x).backward()
    assert engine.forward_count == 1 and engine.last_report.original_bytes > 0


def test_one_storage_saved_by_several_ops_is_compressed_and_counted_once():
    from effplug.models import tiny_llama

    torch.manual_seed(0)
    model = tiny_llama()
    ids = torch.randint(0, 128, (4, 64))
    step = lambda: model(input_ids=ids, labels=ids).loss
    engine = ActivationCompressor(model, method="actnn", bits=4, seed=0, scope="model")
    exact, held = engine.step_saved_bytes(step)
    report = engine.last_report
    # every stored storage counted once: in-scope originals never exceed what the exact meter saw for the step
    assert report.original_bytes <= exact
    assert exact / held >= 5.5
    # the q projection stores the layer's normalized input; k and v are handed the same payload
    assert report.per_layer["model.layers.0.self_attn.q_proj"].compressed == 1
    assert "model.layers.0.self_attn.k_proj" not in report.per_layer
    assert "model.layers.0.self_attn.v_proj" not in report.per_layer


def test_comet_rejects_bits_and_says_to_set_the_error_bound():
    with pytest.raises(ValueError, match="error_bound"):
        CompressionConfig(method="comet", bits=2)
    assert CompressionConfig(method="comet").bits is None and CompressionConfig().bits == 4


def test_seeded_runs_repeat_without_an_explicit_seed_and_leave_the_global_rng_alone():
    import effplug.kernels.philox as philox

    def run():
        torch.manual_seed(0)  # what pl.seed_everything(0) and TrainingArguments(seed=0) do
        philox._defaults_drawn = 0  # a fresh process
        model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        x, y = torch.randn(64, 32), torch.randint(0, 8, (64,))
        state = torch.get_rng_state()
        engine = ActivationCompressor(model, method="actnn", bits=2, min_numel=1)  # seed=None
        assert torch.equal(torch.get_rng_state(), state)
        with engine:
            for _ in range(3):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(), run())


def test_compressing_nothing_says_so_once_with_the_knob(caplog):
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.demos.boring_classes import BoringModel

    model = BoringModel()  # Linear(32, 2) on batches of 64: every saved tensor is under min_numel
    engine = ActivationCompressor(model, method="actnn", bits=4).attach()
    with caplog.at_level("WARNING", logger="effplug.compress"):
        for _ in range(2):
            model(torch.randn(4, 32)).sum().backward()
    engine.detach()
    warnings = [r for r in caplog.records if "compressed no saved tensor" in r.message]
    assert len(warnings) == 1 and "min_numel=256" in warnings[0].getMessage()
    assert "batch input" in warnings[0].getMessage() and pl is not None
    caplog.clear()
    with caplog.at_level("WARNING", logger="effplug.compress"):  # once per engine: a new engine says it again
        with ActivationCompressor(model, method="actnn", bits=4):
            model(torch.randn(4, 32)).sum().backward()
    assert len([r for r in caplog.records if "compressed no saved tensor" in r.message]) == 1
    caplog.clear()
    small = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 2))
    with caplog.at_level("WARNING", logger="effplug.compress"), compressed_activations(small, min_numel=1) as quiet:
        small(torch.randn(4, 32)).sum().backward()
    assert quiet.last_report.held_bytes < quiet.last_report.original_bytes
    assert not any("compressed no saved tensor" in r.message for r in caplog.records)
