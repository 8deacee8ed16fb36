"""LayerNorm and the rotary embedding: each Triton kernel against its torch reference bit for bit over odd
shapes, strides and dtypes; each contract against the unfused formula (HF's own function for RoPE); what
autograd keeps; and the patch's reach (per instance, with warnings for what it leaves)."""

import logging

import pytest
import torch
from torch.nn import functional as F

from effplug.kernels.layer_norm import FusedLayerNorm, layer_norm
from effplug.kernels.rope import rotary_embedding

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_triton_matches_the_torch_reference_bit_for_bit(dtype, use_backend, monkeypatch):
    from effplug.kernels import triton_kernels

    # a 2-row tile, so the 600-row case loops inside each program and sums 150 float64 weight partials
    tile = triton_kernels._norm_rows
    monkeypatch.setattr(triton_kernels, "_norm_rows", lambda n, h: (min(2, tile(n, h)[0]), tile(n, h)[1]))
    assert triton_kernels.norm_backward_grid(600, 24) == (2, 4, 150)
    gen = torch.Generator().manual_seed(0)
    for shape in [(3, 37), (2, 5, 64), (1, 1), (4, 130), (600, 24)]:
        for has_bias in (True, False):
            x = (torch.randn(*shape, generator=gen) * 3 + 1).to(dtype)
            w = (torch.randn(shape[-1], generator=gen) * 0.1 + 1).to(dtype)
            b = (torch.randn(shape[-1], generator=gen) * 0.1).to(dtype) if has_bias else None
            results = []
            for backend in ("torch", "triton"):
                use_backend(backend)
                leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if has_bias else ())]
                out = layer_norm(leaves[0], leaves[1], leaves[2] if has_bias else None, 1e-5)
                out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape).to(dtype))
                results.append([out.detach()] + [leaf.grad for leaf in leaves])
            (y0, dx0, *dp0), (y1, dx1, *dp1) = results
            assert torch.equal(_bits(y0), _bits(y1)) and torch.equal(_bits(dx0), _bits(dx1)), (shape, has_bias)
            assert all(torch.equal(p, q) for p, q in zip(dp0, dp1, strict=True))  # float64 sums, rounded once


def test_layer_norm_contract_and_gradients_match_torch_layer_norm():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 50, generator=gen, dtype=torch.float64) * 4 + 2
    w = torch.randn(50, generator=gen, dtype=torch.float64)
    b = torch.randn(50, generator=gen, dtype=torch.float64)
    ours = [t.float().requires_grad_() for t in (x, w, b)]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    out = layer_norm(*ours, 1e-5)
    expected = F.layer_norm(ref[0], (50,), ref[1], ref[2], 1e-5)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad.float())
    expected.backward(grad)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    for a, e in zip(ours, ref, strict=True):
        assert torch.allclose(a.grad.double(), e.grad, atol=1e-4)
    module = FusedLayerNorm(50, bias=False)
    assert module.bias is None
    assert torch.allclose(module(x.float()), F.layer_norm(x.float(), (50,), eps=1e-5), atol=1e-5)
    with pytest.raises(ValueError, match="bias must be 1-D over x's last dimension"):
        layer_norm(x.float(), w.float(), b[:3].float())


def _hf_rotate(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _hf_rope(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + _hf_rotate(q) * sin, k * cos + _hf_rotate(k) * sin


def _projected(batch, seq, heads, dim, gen, dtype):
    """q as HF's attention makes it: a (B, H, S, D) transposed view of a projection's output."""
    leaf = torch.randn(batch, seq, heads * dim, generator=gen).to(dtype).requires_grad_()
    return leaf, lambda: (leaf * 1).view(batch, seq, heads, dim).transpose(1, 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_triton_matches_the_torch_reference_bit_for_bit(dtype, use_backend):
    gen = torch.Generator().manual_seed(2)
    for batch, seq, heads, kv_heads, dim in [(2, 5, 3, 1, 8), (1, 1, 1, 1, 2), (3, 7, 4, 2, 18)]:
        q_leaf, make_q = _projected(batch, seq, heads, dim, gen, dtype)
        k_leaf = torch.randn(batch, kv_heads, seq, dim, generator=gen).to(dtype).requires_grad_()
        cos = torch.randn(batch, seq, dim, generator=gen).to(dtype)
        sin = torch.randn(batch, seq, dim, generator=gen).to(dtype)
        for inplace in (True, False):
            results = []
            for backend in ("torch", "triton"):
                use_backend(backend)
                q_leaf.grad = k_leaf.grad = None
                q, k = make_q(), k_leaf * 1
                q_out, k_out = rotary_embedding(q, k, cos, sin, inplace=inplace)
                assert (q_out.data_ptr() == q.data_ptr()) == inplace
                (q_out.float() * 0.5 + k_out.float().sum()).sum().backward()
                results.append([q_out.detach(), k_out.detach(), q_leaf.grad.clone(), k_leaf.grad.clone()])
            assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(*results, strict=True)), (dim, inplace)


def test_rope_is_hf_bit_for_bit_in_fp32_and_moves_fewer_bytes():
    from effplug.movement import data_movement
    from effplug.profile import saved_bytes

    gen = torch.Generator().manual_seed(3)
    batch, seq, heads, dim = 2, 6, 4, 16
    q_leaf, make_q = _projected(batch, seq, heads, dim, gen, torch.float32)
    k_leaf = torch.randn(batch, 2, seq, dim, generator=gen).requires_grad_()
    cos, sin = torch.randn(batch, seq, dim, generator=gen), torch.randn(batch, seq, dim, generator=gen)
    grads = []
    for rope in (_hf_rope, lambda *a: rotary_embedding(*a, inplace=True)):
        q_leaf.grad = k_leaf.grad = None
        q_out, k_out = rope(make_q(), k_leaf * 1, cos, sin)
        weight = torch.linspace(-1, 1, q_out.numel()).view(q_out.shape)
        ((q_out * weight).sum() + (k_out * k_out).sum()).backward()
        grads.append([q_out.detach(), k_out.detach(), q_leaf.grad, k_leaf.grad])
    for ours, hf in zip(grads[1], grads[0], strict=True):
        assert torch.equal(ours, hf)
    layout = rotary_embedding(q_leaf.detach().view(batch, seq, heads, dim), k_leaf.detach().transpose(1, 2), cos,
                              sin, unsqueeze_dim=2)  # (B, S, H, D)
    hf = _hf_rope(q_leaf.detach().view(batch, seq, heads, dim), k_leaf.detach().transpose(1, 2), cos, sin, 2)
    assert all(torch.equal(a, b) for a, b in zip(layout, hf, strict=True))

    def rotate(rope):
        q, k = make_q(), k_leaf * 1  # made outside the meter: it sees the rotation alone
        return lambda: rope(q, k, cos, sin)

    fused_rope = lambda *a: rotary_embedding(*a, inplace=True)  # noqa: E731
    # cos and sin are constants, so both forms keep only them; fusing saves passes over q and k
    assert saved_bytes(rotate(fused_rope)).activation_bytes == saved_bytes(rotate(_hf_rope)).activation_bytes
    assert saved_bytes(rotate(fused_rope)).activation_bytes == 2 * cos.numel() * 4
    fused, unfused = data_movement(rotate(fused_rope)).total, data_movement(rotate(_hf_rope)).total
    q_and_k = (q_leaf.numel() + k_leaf.numel()) * 4
    assert fused.bytes == 2 * q_and_k + 2 * 2 * cos.numel() * 4  # read q, k (and cos, sin per call), write q, k
    assert unfused.bytes > 3 * fused.bytes, (unfused.bytes, fused.bytes)
    with pytest.raises(ValueError, match="detach them"):
        rotary_embedding(make_q(), k_leaf, cos.requires_grad_(), sin)
    with pytest.raises(ValueError, match="unsqueeze_dim must be 1"):
        rotary_embedding(make_q(), k_leaf, cos, sin, unsqueeze_dim=3)
    with pytest.raises(ValueError, match=r"cos and sin must both be \(B, S, 16\)"):
        rotary_embedding(make_q(), k_leaf, cos[..., :8], sin[..., :8])
    with pytest.raises(ValueError, match="even last dimension"):
        rotary_embedding(torch.zeros(1, 1, 1, 3), torch.zeros(1, 1, 1, 3), torch.zeros(1, 1, 3), torch.zeros(1, 1, 3))


def test_rope_patch_is_per_instance_and_layer_norm_patch_reports_what_it_leaves(caplog, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama

    from effplug.fused import apply_fused_kernels
    from effplug.kernels.rope import RotaryEmbeddingFunction

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                      attn_implementation="sdpa")
    torch.manual_seed(0)
    plain = transformers.LlamaForCausalLM(config)
    torch.manual_seed(0)
    patched = apply_fused_kernels(transformers.LlamaForCausalLM(config), rope=True, softmax=False, rms_norm=False,
                                  swiglu=False, cross_entropy=False)
    assert getattr(modeling_llama.apply_rotary_pos_emb, "_effplug_dispatcher", False)
    calls = []
    fused_apply = RotaryEmbeddingFunction.apply
    monkeypatch.setattr(RotaryEmbeddingFunction, "apply", lambda *a: calls.append(1) or fused_apply(*a))
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    losses, seen = [], []
    for model in (plain, patched):
        calls.clear()
        loss = model(input_ids=ids, labels=ids).loss
        seen.append(len(calls))
        loss.backward()
        losses.append(loss.item())
    assert seen == [0, 2], seen  # the unpatched model still runs HF's function; the patched one q and k fused
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for a, b in zip(plain.parameters(), patched.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)

    odd = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.LayerNorm((2, 4)),
                              torch.nn.LayerNorm(8, elementwise_affine=False))
    with caplog.at_level(logging.WARNING, logger="effplug.fused"):
        apply_fused_kernels(odd, layer_norm=True)
    left = [r.getMessage() for r in caplog.records if "layer_norm left" in r.getMessage()]
    assert len(left) == 2 and "(2, 4)" in left[0] and "without weights" in left[1], left
    x = torch.randn(3, 2, 8)
    assert torch.allclose(odd[0](x), F.layer_norm(x, (8,), odd[0].weight, odd[0].bias), atol=1e-6)


def test_rope_in_place_steps_aside_where_autograd_forbids_writing():
    """A module backward hook returns its output as-is, which autograd forbids writing through (the data-movement
    meter adds such hooks): the rotation is then written to new tensors, with the same values and gradients."""
    gen = torch.Generator().manual_seed(4)
    proj = torch.nn.Linear(16, 16)
    proj.register_full_backward_hook(lambda *_: None)
    x = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    cos, sin = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 5, 8, generator=gen)
    results = []
    for rope in (_hf_rope, lambda *a: rotary_embedding(*a, inplace=True)):
        x.grad = None
        q = proj(x).view(2, 5, 2, 8).transpose(1, 2)
        q_out, k_out = rope(q, q.detach().clone(), cos, sin)
        (q_out * torch.linspace(-1, 1, q_out.numel()).view(q_out.shape)).sum().backward()
        results.append((q_out.detach(), x.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_lightning_door_fuses_the_layer_norms_of_the_lightning_demos_transformer(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.demos import Transformer

    from effplug.callbacks import FusedKernels

    class LM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Transformer(vocab_size=32, ninp=32, nhead=2, nhid=64, nlayers=2, dropout=0.0)
            self.losses = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.nll_loss(self.model(x, y).view(-1, 32), y.view(-1))
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    data = torch.randint(0, 32, (12, 2, 10), generator=torch.Generator().manual_seed(0))
    runs = []
    for callbacks in ([], [FusedKernels(layer_norm=True)]):
        torch.manual_seed(0)
        module = LM()
        trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                             callbacks=callbacks)
        trainer.fit(module, torch.utils.data.DataLoader([(d[0], d[1]) for d in data], batch_size=4))
        runs.append(module)
    plain, fused = runs
    assert sum(hasattr(m, "_effplug_layer_norm") for m in fused.modules()) == 12  # 2 x (2 + 3) + 2 final norms
    assert plain.losses == pytest.approx(fused.losses, abs=1e-5)
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_patch_on_t5_and_vit_matches_the_unpatched_models(caplog):
    """Beyond the six families: ViT (LayerNorm, GELU, softmax) and T5, whose attention adds a learned position
    bias that must keep its gradient. A keyword with math the fused attention lacks runs the family's own."""
    transformers = pytest.importorskip("transformers")
    from effplug.fused.attention import fused_eager_attention
    from effplug.hf import apply_fused_kernels

    t5 = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
                               attn_implementation="eager", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    vit = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3,
                                 attn_implementation="eager", hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    ids = torch.randint(1, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cases = [(transformers.T5ForConditionalGeneration, t5, dict(input_ids=ids, labels=ids)),
             (transformers.ViTForImageClassification, vit, dict(pixel_values=pixels, labels=torch.tensor([0, 2])))]
    for model_class, config, batch in cases:
        models = []
        for patch in (False, True):
            torch.manual_seed(0)
            model = model_class(config)
            if patch:
                apply_fused_kernels(model)
                assert model.config._attn_implementation == "effplug_fused_eager"
            model(**batch).loss.backward()
            models.append(model)
        plain, fused = models
        for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
            assert (a.grad is None) == (b.grad is None)
            assert a.grad is None or torch.allclose(a.grad, b.grad, atol=1e-6), model_class.__name__
    attention = next(m for m in fused.modules() if type(m).__name__ == "ViTAttention")
    q = torch.randn(1, 2, 4, 16)
    with caplog.at_level(logging.WARNING, logger="effplug.fused"):
        out, _ = fused_eager_attention(attention, q, q, q, None, scaling=0.25, softcap=30.0)
    assert "HF passes softcap" in caplog.text and out.shape == (1, 4, 2, 16)
