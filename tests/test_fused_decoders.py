"""RMSNorm, SwiGLU and the fused linear cross-entropy: each Triton kernel against its torch reference bit for
bit over odd shapes and dtypes, each contract against the unfused torch formula, the loss's memory bound,
and the decoder patch (GPT-2, Llama, Qwen2, Qwen3, Mistral) against the unpatched model through training."""

import logging
import math

import pytest
import torch
from torch.nn import functional as F

from effplug.kernels.gelu import FusedGELU, geglu, gelu
from effplug.kernels.linear_cross_entropy import _cross_entropy_rows_torch, linear_cross_entropy
from effplug.kernels.rms_norm import FusedRMSNorm, rms_norm
from effplug.kernels.swiglu import swiglu

transformers = pytest.importorskip("transformers")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(3, 37), (2, 5, 64), (1, 1), (4, 130)]


def _bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def _run_both(use_backend, fn, inputs):
    """Outputs and input gradients of ``fn(*inputs)`` under each backend."""
    results = []
    for backend in ("torch", "triton"):
        use_backend(backend)
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype))
        results.append([out.detach(), *[leaf.grad for leaf in leaves]])
    return results


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_triton_matches_the_torch_reference_bit_for_bit(dtype, use_backend, monkeypatch):
    from effplug.kernels import triton_kernels

    tile = triton_kernels._norm_rows  # a 2-row tile: the 600-row case loops and sums 150 weight partials
    monkeypatch.setattr(triton_kernels, "_norm_rows", lambda n, h: (min(2, tile(n, h)[0]), tile(n, h)[1]))
    gen = torch.Generator().manual_seed(0)
    for shape in [*SHAPES, (600, 24)]:
        for offset in (0.0, 1.0):
            x = torch.randn(*shape, generator=gen).to(dtype)
            w = (torch.randn(shape[-1], generator=gen) * 0.1 + (1 - offset)).to(dtype)
            (y0, dx0, dw0), (y1, dx1, dw1) = _run_both(use_backend, lambda a, b: rms_norm(a, b, 1e-6, offset),
                                                       [x, w])
            assert torch.equal(_bits(y0), _bits(y1)) and torch.equal(_bits(dx0), _bits(dx1)), (shape, offset)
            assert torch.equal(dw0, dw1)  # float64 sums, rounded once


def test_rms_norm_contract_and_gradients_match_the_unfused_formula():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 50, generator=gen, dtype=torch.float64)
    w = torch.randn(50, generator=gen, dtype=torch.float64)
    for offset in (0.0, 1.0):
        xs, ws = x.float().requires_grad_(), w.float().requires_grad_()
        ref_x, ref_w = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = rms_norm(xs, ws, 1e-5, offset)
        ref = ref_x * torch.rsqrt(ref_x.pow(2).mean(-1, keepdim=True) + 1e-5) * (offset + ref_w)
        grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        out.backward(grad.float())
        ref.backward(grad)
        assert torch.allclose(out.double(), ref, atol=1e-5)
        assert torch.allclose(xs.grad.double(), ref_x.grad, atol=1e-5)
        assert torch.allclose(ws.grad.double(), ref_w.grad, atol=1e-5)
    gemma = FusedRMSNorm(50, offset=1.0)
    assert torch.equal(gemma.weight, torch.zeros(50))  # Gemma's weight starts at 0, meaning a scale of 1
    with pytest.raises(ValueError, match="weight must be 1-D over x's last dimension"):
        rms_norm(x.float(), w[:3].float())


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_triton_matches_the_torch_reference_bit_for_bit(dtype, use_backend):
    gen = torch.Generator().manual_seed(2)
    for shape in [*SHAPES, (3, 23000)]:  # the last crosses the torch path's float64 parts
        a = (torch.randn(*shape, generator=gen) * 4).to(dtype)
        b = torch.randn(*shape, generator=gen).to(dtype)
        (o0, da0, db0), (o1, da1, db1) = _run_both(use_backend, swiglu, [a, b])
        assert torch.equal(_bits(o0), _bits(o1)), shape
        assert torch.equal(_bits(da0), _bits(da1)) and torch.equal(_bits(db0), _bits(db1)), shape


def test_swiglu_matches_silu_times_up_and_saves_less():
    from effplug.profile import saved_bytes

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(8, 96, generator=gen, requires_grad=True), torch.randn(8, 96, generator=gen, requires_grad=True)
    ra, rb = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    out, ref = swiglu(a, b), F.silu(ra) * rb
    grad = torch.randn(out.shape, generator=gen)
    out.backward(grad)
    ref.backward(grad.double())
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.allclose(a.grad.double(), ra.grad, atol=1e-6) and torch.allclose(b.grad.double(), rb.grad, atol=1e-6)
    fused = saved_bytes(lambda: swiglu(a, b)).activation_bytes
    unfused = saved_bytes(lambda: F.silu(a) * b).activation_bytes
    assert fused * 3 == unfused * 2, (fused, unfused)  # a and b, not silu(a)
    with pytest.raises(ValueError, match="one shape and dtype"):
        swiglu(a, b[:, :3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_and_geglu_triton_match_the_torch_reference_bit_for_bit(dtype, use_backend):
    gen = torch.Generator().manual_seed(7)
    for shape in [*SHAPES, (3, 23000)]:
        for approximate in ("none", "tanh"):
            a = (torch.randn(*shape, generator=gen) * 4).to(dtype)  # out to -12, where 1 + erf would cancel
            b = torch.randn(*shape, generator=gen).to(dtype)
            (o0, da0), (o1, da1) = _run_both(use_backend, lambda x: gelu(x, approximate), [a])
            assert torch.equal(_bits(o0), _bits(o1)) and torch.equal(_bits(da0), _bits(da1)), (shape, approximate)
            (o0, da0, db0), (o1, da1, db1) = _run_both(use_backend, lambda x, y: geglu(x, y, approximate), [a, b])
            assert torch.equal(_bits(o0), _bits(o1)) and torch.equal(_bits(da0), _bits(da1))
            assert torch.equal(_bits(db0), _bits(db1)), (shape, approximate)


def test_gelu_matches_torch_gelu_and_geglu_its_product():
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(4000, generator=gen, dtype=torch.float64) * 3
    b = torch.randn(4000, generator=gen, dtype=torch.float64)
    for approximate in ("none", "tanh"):
        x, ref_x = a.float().requires_grad_(), a.clone().requires_grad_()
        out, ref = gelu(x, approximate), F.gelu(ref_x, approximate=approximate)
        out.backward(torch.ones_like(out))
        ref.backward(torch.ones_like(ref))
        assert (out.double() - ref).abs().max() < 5e-7 and (x.grad.double() - ref_x.grad).abs().max() < 5e-7
        gated = geglu(a.float(), b.float(), approximate)
        assert torch.allclose(gated.double(), F.gelu(a, approximate=approximate) * b, atol=1e-6)
    assert FusedGELU("tanh")(a.float()).shape == a.shape
    with pytest.raises(ValueError, match="approximate='fast': use one of none, tanh"):
        gelu(a.float(), "fast")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_dropout_triton_matches_the_torch_reference_bit_for_bit(dtype, use_backend):
    from effplug.kernels.softmax import scaled_masked_softmax

    gen = torch.Generator().manual_seed(9)
    cases = [((2, 3, 5, 7), (2, 1, 5, 7)), ((1, 2, 3, 33), (1, 1, 1, 33)), ((2, 1, 4, 4), None),
             ((1, 1, 2, 130), (1, 1, 2, 130))]
    for shape, mask_shape in cases:
        for p in (0.0, 0.2):
            scores = (torch.randn(*shape, generator=gen) * 3).to(dtype)
            mask = None if mask_shape is None else torch.where(
                torch.rand(*mask_shape, generator=gen) < 0.3, -1e4, 0.0).to(dtype)
            (o0, ds0), (o1, ds1) = _run_both(
                use_backend, lambda s: scaled_masked_softmax(s, 0.35, mask, p, seed=5), [scores])
            assert torch.equal(_bits(o0), _bits(o1)) and torch.equal(_bits(ds0), _bits(ds1)), (shape, p)


def test_softmax_dropout_contract_gradients_and_saved_bytes():
    from effplug.kernels.softmax import scaled_masked_softmax
    from effplug.profile import saved_bytes

    gen = torch.Generator().manual_seed(10)
    s = torch.randn(2, 3, 5, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(2, 1, 5, 16, generator=gen, dtype=torch.float64)
    x = s.detach().float().requires_grad_()
    out, ref = scaled_masked_softmax(x, 0.5, mask.float()), F.softmax(s * 0.5 + mask, -1)
    grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    out.backward(grad.float())
    ref.backward(grad)
    assert torch.allclose(out.double(), ref, atol=1e-6) and torch.allclose(x.grad.double(), s.grad, atol=1e-6)
    big = torch.randn(4, 4, 64, 64, generator=gen)
    dropped = scaled_masked_softmax(big, 1.0, None, p=0.25, seed=3)
    kept = (dropped != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.01
    plain = scaled_masked_softmax(big, 1.0)
    assert torch.allclose(dropped[dropped != 0], plain[dropped != 0] / 0.75, atol=1e-6)  # kept values rescaled
    bools = torch.rand(4, 1, 64, 64, generator=gen) > 0.5
    bools[..., 0] = True
    assert torch.equal(scaled_masked_softmax(big, 1.0, bools) == 0, ~bools.expand_as(big))
    leaf = big.clone().requires_grad_()
    fused = saved_bytes(lambda: scaled_masked_softmax(leaf, 1.0, None, p=0.25, seed=3)).activation_bytes
    unfused = saved_bytes(lambda: F.dropout(F.softmax(leaf, -1), 0.25)).activation_bytes
    assert fused == big.numel() * 4 and unfused > fused, (fused, unfused)  # y only: no mask
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_masked_softmax(big, 1.0, torch.zeros(3, 1, 64, 64))


def test_sdpa_attention_is_left_as_it_is_and_said_once(caplog):
    from effplug.hf import apply_fused_kernels

    model = _decoder("llama", attention="sdpa")
    with caplog.at_level(logging.WARNING, logger="effplug.fused"):
        apply_fused_kernels(model)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="softmax=True"):
        apply_fused_kernels(_decoder("qwen2", attention="sdpa"), softmax=True)


def test_cross_entropy_rows_triton_matches_the_torch_reference_bit_for_bit(use_backend):
    from effplug.kernels import dispatch

    gen = torch.Generator().manual_seed(4)
    for rows, vocab in [(5, 7), (3, 1500), (1, 2049), (8, 33)]:
        for smoothing, z_loss in [(0.0, 0.0), (0.1, 1e-4)]:
            z = torch.randn(rows, vocab, generator=gen) * 3
            target = torch.randint(0, vocab, (rows,), generator=gen)
            target[0] = -100
            z_torch, z_triton = z.clone(), z.clone()
            ref = _cross_entropy_rows_torch(z_torch, target, -100, smoothing, z_loss, 0.25)
            use_backend("triton")
            got = dispatch.triton_kernels().cross_entropy_rows(z_triton, target, -100, smoothing, z_loss, 0.25)
            assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1]), (rows, vocab)
            assert torch.equal(z_torch, z_triton), (rows, vocab)  # the gradient written over the logits
            assert torch.all(z_torch[0] == 0) and ref[0][0] == 0  # the ignored row


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_cross_entropy_matches_linear_then_cross_entropy(reduction):
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 19, 16, generator=gen, requires_grad=True)
    weight = torch.randn(101, 16, generator=gen, requires_grad=True)
    bias = torch.randn(101, generator=gen, requires_grad=True)
    target = torch.randint(0, 101, (2, 19), generator=gen)
    target[0, :5] = -100
    for smoothing, z_loss in [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-3)]:
        for chunk in (None, 4, 100):
            results = []
            for fused in (False, True):
                for p in (hidden, weight, bias):
                    p.grad = None
                if fused:
                    loss = linear_cross_entropy(hidden, weight, target, bias, label_smoothing=smoothing,
                                                z_loss=z_loss, reduction=reduction, chunk_rows=chunk)
                else:
                    logits = F.linear(hidden, weight, bias).view(-1, 101)
                    flat, keep = target.view(-1), target.view(-1) != -100
                    loss = F.cross_entropy(logits, flat, label_smoothing=smoothing, reduction=reduction)
                    lse2 = torch.logsumexp(logits, 1)[keep].pow(2)
                    loss = loss + z_loss * (lse2.mean() if reduction == "mean" else lse2.sum())
                (1.7 * loss).backward()
                results.append([loss.detach(), hidden.grad.clone(), weight.grad.clone(), bias.grad.clone()])
            tol = 1e-5 if reduction == "mean" else 1e-4
            for a, b in zip(*results, strict=True):
                assert torch.allclose(a, b, atol=tol, rtol=1e-5), (smoothing, z_loss, chunk, (a - b).abs().max())
    with pytest.raises(ValueError, match="supports mean, sum"):
        linear_cross_entropy(hidden, weight, target, reduction="none")
    with pytest.raises(ValueError, match=r"weight must be \[vocab, 16\]"):
        linear_cross_entropy(hidden, weight.t(), target)


class LargestLogits:
    """The largest tensor with a vocabulary-sized axis that is not weight-shaped (W, its views, dW)."""

    def __init__(self, vocab, hidden_size):
        from torch.utils._python_dispatch import TorchDispatchMode

        meter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(t, torch.Tensor) and vocab in t.shape and vocab * hidden_size != t.numel():
                        meter.largest = max(meter.largest, t.numel() * t.element_size())
                return out

        self.largest, self.mode = 0, Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def test_linear_cross_entropy_never_holds_more_than_an_eighth_of_the_logits():
    """At vocab 32k and 4096 rows, the largest tensor the fused loss creates, forward and backward, is a chunk."""
    rows, hidden_size, vocab = 4096, 8, 32000
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(rows, hidden_size, generator=gen, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.02).requires_grad_()
    target = torch.randint(0, vocab, (rows,), generator=gen)
    with LargestLogits(vocab, hidden_size) as meter:
        loss = linear_cross_entropy(hidden, weight, target)
        loss.backward()
    logits_bytes = rows * vocab * 4
    assert 0 < meter.largest <= logits_bytes // 8, (meter.largest, logits_bytes)
    small = hidden[:32].detach()
    reference = F.cross_entropy(small @ weight.detach().t(), target[:32])
    assert math.isclose(linear_cross_entropy(small, weight.detach(), target[:32]).item(), reference.item(),
                        rel_tol=1e-5)
    with LargestLogits(vocab, hidden_size) as meter:  # the meter sees the unfused loss's logits, so it can fail
        F.cross_entropy(small.requires_grad_() @ weight.t(), target[:32]).backward()
    assert meter.largest >= 32 * vocab * 4


SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=96, head_dim=8)


def _decoder(family, attention="eager"):
    torch.manual_seed(0)
    if family == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, attn_implementation=attention))
    config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
              "qwen3": transformers.Qwen3Config, "mistral": transformers.MistralConfig}[family](
        **SMALL, attn_implementation=attention)
    model_class = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
                   "qwen3": transformers.Qwen3ForCausalLM, "mistral": transformers.MistralForCausalLM}[family]
    return model_class(config)


# norms per 2-layer model: 2 per layer and the final one; Qwen3 adds q_norm and k_norm per layer
EXPECTED = {"gpt2": {"softmax": 2, "layer_norm": 5, "gelu": 2, "cross_entropy": 1},
            "llama": {"softmax": 2, "rms_norm": 5, "swiglu": 2, "rope": 2, "cross_entropy": 1},
            "qwen2": {"softmax": 2, "rms_norm": 5, "swiglu": 2, "rope": 2, "cross_entropy": 1},
            "qwen3": {"softmax": 2, "rms_norm": 9, "swiglu": 2, "rope": 2, "cross_entropy": 1},
            "mistral": {"softmax": 2, "rms_norm": 5, "swiglu": 2, "rope": 2, "cross_entropy": 1}}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_decoder_patch_matches_the_unpatched_model_through_optimizer_steps(family, caplog):
    from effplug import fused

    ids = torch.randint(1, 96, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :4] = -100
    padding = torch.ones_like(ids)
    padding[1, :3] = 0  # left padding: the mask must reach the fused softmax
    plain, patched = _decoder(family), _decoder(family)
    with caplog.at_level(logging.INFO, logger="effplug.fused"):
        getattr(fused, f"apply_fused_kernels_to_{family}")(patched)
    counts = {op: sum(f"{op} fused in {n} modules" in r.getMessage() for r in caplog.records)
              for op, n in EXPECTED[family].items()}
    assert all(counts.values()), (counts, [r.getMessage() for r in caplog.records])
    # SGD, not Adam: Adam divides by the gradient's own size, so it turns a gradient that is zero in exact
    # arithmetic (the key bias under softmax) into full-size steps driven by rounding noise
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (plain, patched)]
    for _ in range(3):
        losses = []
        for model, opt in zip((plain, patched), opts, strict=True):
            opt.zero_grad()
            out = model(input_ids=ids, attention_mask=padding, labels=labels)
            out.loss.backward()
            opt.step()
            losses.append(out.loss.item())
        assert out.logits is None  # the fused loss made no logits
        assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for a, b in zip(plain.parameters(), patched.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    patched.eval()
    with torch.no_grad():  # evaluation keeps the logits, and the patched norms and MLPs give the same ones
        assert torch.allclose(plain.eval()(input_ids=ids, attention_mask=padding).logits,
                              patched(input_ids=ids, attention_mask=padding, labels=labels).logits, atol=1e-5)
    assert patched.config._attn_implementation == "effplug_fused_eager"


def test_decoder_patch_in_bf16_stays_within_bf16_tolerance():
    from effplug.hf import apply_fused_kernels

    ids = torch.randint(1, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    plain, patched = _decoder("qwen2").to(torch.bfloat16), _decoder("qwen2").to(torch.bfloat16)
    apply_fused_kernels(patched)
    losses, grads = [], []
    for model in (plain, patched):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.float().item())
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_fused_decoder_trains_under_eff_trainer_with_compression_and_qat(tmp_path, caplog):
    from effplug.hf import EffTrainer, apply_fused_kernels

    model = _decoder("llama")
    apply_fused_kernels(model, label_smoothing=0.0)
    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": (ids := torch.randint(1, 96, (16,), generator=gen)), "labels": ids} for _ in range(8)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8,
                                          report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
                                          logging_steps=1, learning_rate=3e-3)
    trainer = EffTrainer(model=model, args=args, train_dataset=rows, activation_compression="actnn",
                         quantization={"weight_bits": 8, "act_bits": 8})
    with caplog.at_level(logging.WARNING, logger="effplug.fused"):
        trainer.train()
    report = trainer.activation_callback.engine.last_report
    assert report.ratio > 2, report
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    # QAT wrapped the untied head, so the loss fell back to unfused and said so once
    fallbacks = [r for r in caplog.records if "cross_entropy falls back" in r.getMessage()]
    assert len(fallbacks) == 1, [r.getMessage() for r in caplog.records]
    assert sum(getattr(m, "_effplug_swiglu", False) for m in model.modules()) == 2


def test_apply_fused_kernels_errors_say_what_to_do():
    from effplug.hf import apply_fused_kernels

    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="rms_norm is built for: llama, qwen2, qwen3, mistral"):
        apply_fused_kernels(bert, rms_norm=True)
    with pytest.raises(ValueError, match=r"supported families: bert \(bias_dropout_residual, softmax, layer_norm, "
                                         r"gelu\)"):
        apply_fused_kernels(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="rope is built for: llama, qwen2, qwen3, mistral"):
        apply_fused_kernels(bert, rope=True)
    with pytest.raises(TypeError, match="did you mean 'swiglu'"):
        apply_fused_kernels(_decoder("llama"), swiglue=True)
