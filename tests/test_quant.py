"""effplug.quant (QAT): estimators against their formulas, fake quantizers, conversion, export parity.

once-QAT is in test_once_qat.py, DIR-Net in test_dirnet.py."""

import logging
import math

import pytest
import torch
from conftest import digits_resnet as _digits_resnet

from effplug.quant import (
    FakeQuantize,
    QATConfig,
    binary,
    export_quantized,
    integer_model,
    octav_clip,
    quantize_model,
    quantized_layers,
)


def _samples(dist: str, n: int = 50_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dist == "gaussian":
        return torch.randn(n, generator=g, dtype=torch.float64)
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    if dist == "laplace":
        return -torch.sign(u) * torch.log1p(-2 * u.abs())
    # Student-t with 3 degrees of freedom: heavy tails
    z = torch.randn(n, generator=g, dtype=torch.float64)
    chi2 = torch.randn(3, n, generator=g, dtype=torch.float64).pow(2).sum(0)
    return z / torch.sqrt(chi2 / 3)


def _paper_mse(x: torch.Tensor, clips: torch.Tensor, bits: int) -> torch.Tensor:
    """MSE of OCTAV's quantizer Q(x; s) = clip(s 2^(1-B) round(x 2^(B-1) / s), -s, s), for each clip."""
    step = clips[:, None] * 2.0 ** (1 - bits)
    q = torch.maximum(torch.minimum(step * torch.round(x[None] / step), clips[:, None]), -clips[:, None])
    return (q - x[None]).pow(2).mean(dim=1)


@pytest.mark.parametrize("dist", ["gaussian", "laplace", "student_t3"])
def test_octav_clip_is_within_one_percent_of_brute_force_optimum(dist):
    x = _samples(dist)
    top = float(x.abs().max())
    for bits in range(2, 9):
        s = octav_clip(x.float(), bits).double()
        coarse = torch.linspace(top / 400, top, 400, dtype=torch.float64)
        errors = torch.cat([_paper_mse(x, c, bits) for c in coarse.split(50)])
        best = coarse[errors.argmin()]
        fine = torch.linspace(float(best) - top / 200, float(best) + top / 200, 400, dtype=torch.float64).clamp_min(1e-6)
        oracle = torch.cat([_paper_mse(x, c, bits) for c in fine.split(50)]).min()
        oracle = min(float(oracle), float(errors.min()))
        ratio = float(_paper_mse(x, s.reshape(1), bits)) / oracle
        assert ratio < 1.01, (dist, bits, ratio)


def test_octav_clip_per_channel_equals_per_row_calls():
    w = torch.randn(6, 50) * torch.arange(1, 7)[:, None]
    per_channel = octav_clip(w, 4, per_channel_dim=0)
    rows = torch.stack([octav_clip(w[i], 4) for i in range(6)])
    assert per_channel.shape == (6,)
    torch.testing.assert_close(per_channel, rows)
    torch.testing.assert_close(octav_clip(w.t(), 4, per_channel_dim=1), rows)


def test_octav_fixed_point_satisfies_its_equation():
    x = _samples("laplace").float()
    s = octav_clip(x, 4)
    outside = x.abs() > s
    rhs = x.abs()[outside].sum() / (4.0**-4 / 3 * (~outside).sum() + outside.sum())
    assert abs(float(rhs - s)) <= 1e-4 * float(s)


@pytest.mark.parametrize("bad", [0, 1, 9, 3.5, True, "4"])
def test_bad_bits_are_rejected_with_the_allowed_range(bad):
    with pytest.raises(ValueError, match="weight_bits=.*use an integer from 2 to 8"):
        QATConfig(weight_bits=bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "tpu9"}, "backend='tpu9' is not supported; use one of generic, tensorrt"),
    ({"weight_estimator": "pact"}, "weight_estimator='pact' is not supported"),
    ({"act_estimator": "dorefa"}, "act_estimator='dorefa' is not supported"),
    ({"act_bits": 12}, "act_bits=12"),
    ({"bit_widths": [4]}, "at least two widths"),
    ({"bit_widths": [2, 4], "weight_estimator": "dorefa"}, "needs a symmetric weight grid"),
    ({"bits": {"head": (4, 4, 4)}}, "give one integer or"),
    ({"weight_gradient": "pwl"}, "weight_gradient='pwl'"),
])
def test_bad_configs_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QATConfig(**kwargs)


def test_model_without_quantizable_layers_is_an_error():
    with pytest.raises(ValueError, match="no quantizable layers"):
        quantize_model(torch.nn.Sequential(torch.nn.ReLU()), QATConfig())


def test_lsq_gradients_match_the_closed_form():
    torch.manual_seed(0)
    fq = FakeQuantize(4, "lsq", role="weight", mode="symmetric")
    x = torch.randn(300) * 2
    fq(x)  # initializes the step
    with torch.no_grad():
        fq.step.fill_(0.3)
    x.requires_grad_(True)
    fq(x).sum().backward()
    qmin, qmax = -8, 7
    v = x.detach() / 0.3
    expected = torch.where(v <= qmin, float(qmin), torch.where(v >= qmax, float(qmax), torch.round(v) - v))
    g = 1 / math.sqrt(x.numel() * qmax)  # LSQ's gradient scale
    torch.testing.assert_close(fq.step.grad, (expected.sum() * g).reshape(1), rtol=1e-5, atol=1e-6)
    inside = (v > qmin) & (v < qmax)
    torch.testing.assert_close(x.grad, inside.float())


def test_lsq_init_follows_the_paper():
    w = torch.randn(3, 40)
    fq = FakeQuantize(4, "lsq", role="weight", mode="symmetric", channel_dim=0, channels=3)
    fq(w)
    torch.testing.assert_close(fq.step.detach(), 2 * w.abs().mean(dim=1) / math.sqrt(7))


def test_pact_gradients_match_the_paper():
    torch.manual_seed(0)
    fq = FakeQuantize(4, "pact", role="act", mode="unsigned")
    x = torch.randn(500).relu() * 3
    fq(x)
    with torch.no_grad():
        fq.alpha.fill_(2.0)
    x.requires_grad_(True)
    out = fq(x)
    out.sum().backward()
    assert torch.equal(fq.alpha.grad, (x.detach() >= 2.0).float().sum().reshape(1))  # PACT eq. 3
    torch.testing.assert_close(x.grad, ((x.detach() >= 0) & (x.detach() < 2.0)).float())
    levels = torch.round(out.detach() / (2.0 / 15))
    torch.testing.assert_close(out.detach(), levels * (2.0 / 15))
    assert float(out.detach().max()) <= 2.0 + 1e-6


def test_mad_gradient_is_clip_over_magnitude_outside_the_range():
    fq = FakeQuantize(4, "minmax", role="weight", mode="symmetric", gradient="mad")
    with torch.no_grad():
        fq(torch.tensor([-1.0, 1.0]))  # clip = 1
    x = torch.tensor([0.5, -0.9, 2.0, -4.0], requires_grad=True)
    fq.initialized.fill_(True)
    fq._cache_key = fq._weight_cache_key(x)  # keep clip = 1 for this input
    fq(x).sum().backward()
    scale = 1.0 / 8
    high, low = 7 * scale, -1.0
    expected = torch.tensor([1.0, 1.0, high / 2.0, abs(low) / 4.0])
    torch.testing.assert_close(x.grad, expected)


def test_dorefa_weights_lie_on_its_grid():
    w = torch.randn(8, 16) * 0.3
    fq = FakeQuantize(3, "dorefa", role="weight")
    out = fq(w)
    unit = (out / w.abs().max() + 1) / 2 * 7  # back to quantize_k's integer levels
    torch.testing.assert_close(unit, torch.round(unit), atol=1e-5, rtol=0)
    assert out.abs().max() <= w.abs().max() + 1e-6


def test_auto_mode_picks_unsigned_after_relu_and_symmetric_otherwise():
    a, b = FakeQuantize(4, "minmax", role="act", mode="auto"), FakeQuantize(4, "minmax", role="act", mode="auto")
    a(torch.rand(100))
    b(torch.randn(100))
    assert (a.mode, a.code_range()) == ("unsigned", (0, 15))
    assert (b.mode, b.code_range()) == ("symmetric", (-8, 7))


def test_activation_ranges_follow_an_ema_and_eval_uses_it():
    fq = FakeQuantize(8, "minmax", role="act", mode="symmetric", momentum=0.5)
    fq(torch.full((10,), 2.0))
    fq(torch.full((10,), 4.0))
    assert float(fq.clip) == pytest.approx(3.0)
    fq.eval()
    fq(torch.full((10,), 100.0))
    assert float(fq.clip) == pytest.approx(3.0)


def test_bf16_in_bf16_out():
    fq = FakeQuantize(4, "octav", role="weight", channel_dim=0, channels=4)
    out = fq(torch.randn(4, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16




def test_conversion_follows_preset_rules_first_last_exclude_and_per_layer_bits():
    model = quantize_model(_digits_resnet(), QATConfig(weight_bits=4, act_bits=4, backend="tensorrt",
                                                       exclude=("stage2.conv2",), bits={"stage1.conv2": (3, 6)}))
    layers = quantized_layers(model)
    assert "stage2.conv2" not in layers and type(model.stage2.conv2) is torch.nn.Conv2d
    assert (layers["stem.0"].weight_quant.bits, layers["stem.0"].act_quant.bits) == (8, 8)
    assert (layers["head"].weight_quant.bits, layers["head"].act_quant.bits) == (8, 8)
    assert (layers["stage1.conv2"].weight_quant.bits, layers["stage1.conv2"].act_quant.bits) == (3, 6)
    assert (layers["stage1.conv1"].weight_quant.bits, layers["stage1.conv1"].act_quant.bits) == (4, 4)
    w = layers["stage1.conv1"].weight_quant
    assert w.channel_dim == 0 and w.code_range() == (-7, 7)  # tensorrt: per-channel, restricted range
    assert layers["stage1.conv1"].act_quant.mode == "symmetric"
    model(torch.randn(4, 1, 8, 8))
    codes, _, zero = w.integer_codes(layers["stage1.conv1"].weight)
    assert codes.min() >= -7 and codes.max() <= 7 and float(zero) == 0


def test_presets_fbgemm_reduce_range_vitis_power_of_two_snpe_affine_weights():
    fb = quantized_layers(quantize_model(_digits_resnet(), QATConfig(weight_bits=8, act_bits=8, backend="fbgemm",
                                                                    act_estimator="octav")))
    act = fb["stage1.conv1"].act_quant
    assert act.mode == "asymmetric" and act.code_range() == (0, 127) and act.estimator == "minmax"
    vitis = quantize_model(_digits_resnet(), QATConfig(weight_bits=4, act_bits=4, backend="vitis"))
    vitis(torch.randn(4, 1, 8, 8))
    for layer in quantized_layers(vitis).values():
        _, scale, _ = layer.weight_quant.integer_codes(layer.weight)
        assert torch.equal(torch.log2(scale), torch.round(torch.log2(scale)))
        assert layer.weight_quant.channel_dim is None
    snpe = quantized_layers(quantize_model(_digits_resnet(), QATConfig(backend="snpe")))
    assert snpe["stage1.conv1"].weight_quant.mode == "asymmetric"


@pytest.mark.parametrize("weight_estimator, act_estimator, backend", [
    ("octav", "minmax", "generic"), ("lsq", "lsq", "generic"), ("minmax", "pact", "tensorrt"),
    ("dorefa", "minmax", "fbgemm"), ("lsq", "lsq+", "snpe"), ("mse", "percentile", "vitis"),
    ("percentile", "octav", "onednn"),
])
def test_export_integer_forward_matches_fake_quant_forward(weight_estimator, act_estimator, backend):
    model = quantize_model(_digits_resnet(), QATConfig(weight_bits=4, act_bits=4, weight_estimator=weight_estimator,
                                                       act_estimator=act_estimator, backend=backend))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):  # move learned scales and EMA ranges off their initial values
        opt.zero_grad()
        model(torch.randn(16, 1, 8, 8)).logsumexp(-1).sum().backward()
        opt.step()
    model.eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
        exported = export_quantized(model)
        got = integer_model(model, exported)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert exported["stage1.conv1.weight_int"].dtype in (torch.int8, torch.uint8)
    assert all(isinstance(v, torch.Tensor) for v in exported.values())


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
def test_hf_models_convert_and_the_optimizer_covers_every_parameter(arch):
    from effplug import models

    torch.manual_seed(0)
    model = {"gpt2": models.tiny_gpt2, "bert": lambda: models.tiny_bert(vocab_size=128), "llama": models.tiny_llama}[arch]()
    before = {id(p) for p in model.parameters()}
    quantize_model(model, QATConfig(weight_bits=4, act_bits=8, weight_estimator="lsq", act_estimator="lsq",
                                    quantize_embeddings=True))
    params = list(model.parameters())
    assert before <= {id(p) for p in params}  # the float weights are the same objects
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    covered = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert covered == {id(p) for p in model.parameters()}
    ids = torch.randint(0, 128, (2, 12))
    out = model(ids).logits
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in params)
    kinds = {type(m).__name__ for m in quantized_layers(model).values()}
    assert "QuantEmbedding" in kinds and ("QuantConv1D" in kinds if arch == "gpt2" else "QuantLinear" in kinds)
    if arch == "gpt2":
        assert model.lm_head.weight is model.transformer.wte.weight  # tying survives
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(integer_model(model, export_quantized(model))(ids).logits, model(ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_converting_twice_is_a_no_op():
    model = quantize_model(_digits_resnet(), QATConfig())
    first = {n: type(m) for n, m in model.named_modules()}
    quantize_model(model, QATConfig())
    assert {n: type(m) for n, m in model.named_modules()} == first


def test_state_dict_round_trip_restores_learned_scales(tmp_path):
    config = QATConfig(weight_bits=4, act_bits=4, weight_estimator="lsq", act_estimator="pact")
    model = quantize_model(_digits_resnet(), config)
    x = torch.randn(8, 1, 8, 8)
    model(x)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("step", "alpha")):
                p.mul_(1.7)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = quantize_model(_digits_resnet(), config)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


















@pytest.mark.skipif(not __import__("importlib").util.find_spec("triton"), reason="triton not installed")
def test_fake_quant_model_is_bit_identical_on_triton_and_torch_kernels(use_backend):
    outputs = {}
    for name in ("torch", "triton"):
        use_backend(name)
        model = quantize_model(_digits_resnet(), QATConfig(weight_bits=4, act_bits=4, weight_estimator="octav",
                                                           act_estimator="minmax", backend="tensorrt"))
        x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
        out = model(x)
        out.square().sum().backward()
        outputs[name] = (out.detach(), x.grad)
    assert torch.equal(outputs["torch"][0], outputs["triton"][0])
    assert torch.equal(outputs["torch"][1], outputs["triton"][1])


def test_export_before_any_forward_and_hf_inference_quantized_models_are_refused():
    model = quantize_model(_digits_resnet(), QATConfig(weight_bits=4, act_bits=4))
    with pytest.raises(ValueError, match="run a forward pass before exporting"):
        export_quantized(model)
    with pytest.raises(ValueError, match="call effplug.quant.quantize_model"):
        export_quantized(_digits_resnet())
    transformers = pytest.importorskip("transformers")  # noqa: F841
    from effplug.hf import apply_quantization

    float_model = _digits_resnet()
    float_model.is_quantized = True  # what HF sets for a model loaded with quantization_config
    with pytest.raises(ValueError, match="QAT needs the float model"):
        apply_quantization(float_model, QATConfig())


# ---- no silent damage: ranges follow every optimizer, non-finite batches never poison state -------------

def _minmax_mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 4))
    return quantize_model(net, QATConfig(weight_bits=4, act_bits=8, weight_estimator="minmax", first_last_bits=None))


@pytest.mark.parametrize("kind", ["fused", "foreach", "plain"])
def test_weight_ranges_follow_fused_foreach_and_plain_optimizers(kind):
    # adamw_torch_fused (HF's default) updates weights without bumping weight._version
    model = _minmax_mlp()
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "plain": {"foreach": False}}[kind]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, **options)
    x = torch.randn(32, 8)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        model(x)
        for layer in quantized_layers(model).values():
            torch.testing.assert_close(layer.weight_quant.clip, layer.weight.detach().abs().amax(dim=1))


def test_deepcopy_of_a_trained_qat_model_gives_the_same_logits():
    import copy

    model = _minmax_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    x = torch.randn(32, 8)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    model.eval()
    copied = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(model(x), copied(x))


def test_a_nan_batch_never_poisons_minmax_ranges(caplog):
    fq = FakeQuantize(8, "minmax", role="act", mode="symmetric")
    fq(torch.full((10,), 2.0))
    bad = torch.full((10,), 1.0)
    bad[3] = float("nan")
    with caplog.at_level("WARNING", logger="effplug.quant"):
        fq(bad)
        fq(bad)
    assert float(fq.clip) == 2.0
    assert sum("inf/NaN" in r.message for r in caplog.records) <= 1
    fq(torch.full((10,), 4.0))
    assert float(fq.clip) == pytest.approx(2.2)


def test_an_inf_input_gives_lsq_a_finite_step_and_step_gradient():
    fq = FakeQuantize(4, "lsq", role="act", mode="symmetric")
    x = torch.randn(4, 16)
    fq(x)
    step_before = fq.step.detach().clone()
    x = x.clone()
    x[0, 0] = float("inf")
    out = fq(x.requires_grad_())
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(fq.step.grad).all()
    torch.optim.SGD([fq.step], lr=0.1).step()
    assert torch.isfinite(fq.step).all() and not torch.equal(fq.step, step_before)


def test_a_first_batch_of_inf_leaves_lsq_uninitialized():
    fq = FakeQuantize(4, "lsq", role="act", mode="symmetric")
    fq(torch.full((2, 8), float("inf")))
    assert not bool(fq.initialized) and torch.isfinite(fq.step).all()
    fq(torch.randn(2, 8))
    assert bool(fq.initialized) and torch.isfinite(fq.step).all()




# ---- drops into any model: attention blocks, coverage reports, small models ------------------------------

def test_multihead_attention_projections_are_quantized_on_the_lightning_demo_transformer(caplog):
    from pytorch_lightning.demos import Transformer

    from effplug.quant.convert import set_quantization_enabled
    from effplug.quant.modules import QuantMultiheadAttention

    torch.manual_seed(0)
    model = Transformer(vocab_size=64, ninp=32, nhead=2, nhid=32, nlayers=1)
    x = torch.randint(0, 64, (4, 8))
    model.eval()
    with torch.no_grad():
        float_out = model(x, x)
    weights = {n: p for n, p in model.named_parameters() if p.dim() >= 2 and n != "embedding.weight"}
    with caplog.at_level("INFO", logger="effplug.quant"):
        quantize_model(model, QATConfig(weight_bits=4, act_bits=8))
    covered = {id(p) for layer in quantized_layers(model).values() for n, p in layer.named_parameters()
               if "quant" not in n}
    assert all(id(p) in covered for p in weights.values())  # in_proj_weight and out_proj too
    assert sum(isinstance(m, QuantMultiheadAttention) for m in model.modules()) == 3
    report = model._effplug_coverage
    assert report.unsupported == {} and list(report.left_float)[0] == "embedding"
    assert report.left_float["transformer.encoder.layers.0.self_attn.out_proj"].startswith("weight quantized")
    assert report.share == pytest.approx(sum(p.numel() for p in weights.values())
                                         / (sum(p.numel() for p in weights.values()) + 64 * 32))
    assert "8 layers converted" in caplog.text and "left in float: embedding" in caplog.text
    model.train()
    model(x, x).sum().backward()
    attention = model.transformer.encoder.layers[0].self_attn
    assert attention.in_proj_weight.grad is not None and attention.out_proj.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x, x), float_out, atol=1e-4)  # quantized in eval too
        set_quantization_enabled(model, False)
        torch.testing.assert_close(model(x, x), float_out)  # the float path is torch's own
    set_quantization_enabled(model, True)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):  # the quantized demo Transformer learns (the copy task on one batch)
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(model(x, x), x.reshape(-1))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def test_batch_first_encoder_eval_keeps_the_quantized_path():
    from effplug.quant.convert import set_quantization_enabled

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 2, 64, batch_first=True, dropout=0.0)
    encoder = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    quantize_model(encoder, QATConfig(weight_bits=2, act_bits=4, first_last_bits=None))
    x = torch.randn(2, 5, 32)
    encoder.train()
    encoder(x)
    encoder.eval()
    with torch.no_grad():  # torch's fused fast path would read the float weights here
        quantized = encoder(x)
        set_quantization_enabled(encoder, False)
        assert not torch.allclose(quantized, encoder(x), atol=1e-3)


def test_a_one_layer_model_is_quantized_at_weight_bits_and_says_why(caplog):
    with caplog.at_level("WARNING", logger="effplug.quant"):
        model = quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 4)), QATConfig(weight_bits=2, act_bits=8))
    assert model[0].weight_quant.bits == 2 and "first_last_bits=None" in caplog.text


def test_quantize_model_on_a_bare_linear_returns_the_quantized_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    quantized = quantize_model(linear, QATConfig(weight_bits=2, act_bits=None, weight_estimator="minmax"))
    assert quantized is not linear and quantized.weight is linear.weight
    assert not torch.equal(quantized(x), linear(x))


def test_quantizing_again_with_other_settings_is_refused():
    model = quantize_model(_digits_resnet(), QATConfig(weight_bits=4))
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, QATConfig(weight_bits=2))
    assert quantize_model(model, QATConfig(weight_bits=4)) is model  # the same settings: nothing to do


def test_export_refuses_attention_blocks_with_what_to_do():
    wrapped = quantize_model(torch.nn.ModuleDict({"attn": torch.nn.MultiheadAttention(8, 2),
                                                  "head": torch.nn.Linear(8, 8)}), QATConfig())
    wrapped.eval()
    wrapped["attn"](torch.randn(3, 1, 8), torch.randn(3, 1, 8), torch.randn(3, 1, 8))
    wrapped["head"](torch.randn(3, 8))
    with pytest.raises(ValueError, match="exclude"):
        export_quantized(wrapped)


def test_luq_lns_and_binarization_report_their_coverage_and_what_they_skip(caplog):
    from effplug.quant.lns import prepare_lns
    from effplug.quant.luq import prepare_luq

    def net():
        torch.manual_seed(0)
        return torch.nn.ModuleDict({"emb": torch.nn.Embedding(10, 8), "attn": torch.nn.MultiheadAttention(8, 2),
                                    "a": torch.nn.Linear(8, 8), "b": torch.nn.Linear(8, 8), "head": torch.nn.Linear(8, 4)})

    for technique, convert in (("LUQ", lambda m: prepare_luq(m, exclude="head")),
                               ("LNS", lambda m: prepare_lns(m, exclude="head")),
                               ("binarization", lambda m: binary.Binarizer(m, binary.BinarizationConfig(
                                   exclude="head", keep_first_last=False, distill_weight=0)))):
        caplog.clear()
        with caplog.at_level("INFO", logger="effplug.quant"):
            convert(net())
        lines = [r for r in caplog.records if f"effplug.quant {technique}:" in r.message]
        assert len(lines) == 1, technique
        line = lines[0]
        # attention is not handled by these techniques: a WARNING that names it; exclude="head" is one pattern
        assert line.levelname == "WARNING" and "attn (MultiheadAttention)" in line.getMessage(), technique
        assert "head (excluded by 'head')" in line.getMessage() and "2 layers converted" in line.getMessage()


def test_lightning_doors_take_a_single_exclude_pattern_as_a_string():
    pytest.importorskip("pytorch_lightning")
    from effplug.callbacks import Binarization, QuantizationAwareTraining

    assert Binarization(exclude="head").config.exclude == ("head",)
    assert QuantizationAwareTraining(exclude="head").config.exclude == ("head",)




def test_fake_quantize_builds_one_class_per_kind_with_the_same_state_keys():
    from effplug.quant.fake_quantizer import (
        DoReFaQuantizer,
        FakeQuantize,
        Grid,
        LSQQuantizer,
        PACTQuantizer,
        RangeQuantizer,
    )

    cases = {("minmax", "weight", "symmetric"): (RangeQuantizer, {"grid", "initialized", "clip"}),
             ("octav", "act", "asymmetric"): (RangeQuantizer, {"grid", "initialized", "range_min", "range_max"}),
             ("lsq", "weight", "symmetric"): (LSQQuantizer, {"grid", "initialized", "step"}),
             ("lsq+", "act", "symmetric"): (LSQQuantizer, {"grid", "initialized", "step", "offset"}),
             ("pact", "act", "unsigned"): (PACTQuantizer, {"grid", "initialized", "alpha"}),
             ("dorefa", "weight", "asymmetric"): (DoReFaQuantizer, {"grid", "initialized"})}
    for (estimator, role, mode), (kind, keys) in cases.items():
        fq = FakeQuantize(4, estimator, role, mode, 0, 3)
        assert type(fq) is kind and isinstance(fq, FakeQuantize) and set(fq.state_dict()) == keys, estimator
        assert fq.learned == (kind in (LSQQuantizer, PACTQuantizer))
    assert int(FakeQuantize(4, "lsq+", "act", "symmetric").grid) == Grid.ASYMMETRIC
    assert int(FakeQuantize(4, "dorefa", "weight", "unsigned").grid) == Grid.SYMMETRIC
    import copy
    assert type(copy.deepcopy(FakeQuantize(4, "pact", "act", "unsigned"))) is PACTQuantizer
    with pytest.raises(ValueError, match="estimator='foo' is not supported; use one of minmax"):
        FakeQuantize(4, "foo")


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_is_quantized_and_exports_to_integers(groups, caplog):
    from effplug.quant.modules import QuantConvTranspose2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ConvTranspose2d(4, 6, 2, stride=2,
                                groups=groups), torch.nn.ReLU(), torch.nn.Conv2d(6, 2, 1))
    x = torch.randn(8, 4, 5, 7)
    reference = model(x)
    with caplog.at_level(logging.INFO, logger="effplug.quant"):
        quantize_model(model, QATConfig(weight_bits=8, act_bits=8, first_last_bits=None))
    assert isinstance(model[1], QuantConvTranspose2d) and "NOT converted" not in caplog.text
    model.train()
    model(x)  # observe ranges
    model.eval()
    with torch.no_grad():
        fake = model(x)
        got = integer_model(model, export_quantized(model))(x)
    assert fake.shape == reference.shape and (fake - reference).abs().max() < 0.05 * reference.abs().max()
    torch.testing.assert_close(got, fake, rtol=1e-4, atol=1e-4 * float(fake.abs().max()))
