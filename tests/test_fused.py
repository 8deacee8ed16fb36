"""Fused bias + dropout + residual: the Triton kernel against its torch reference bit for bit over odd shapes
and dtypes, the mask's statistics and its regeneration in backward, no saved activations, the module's
checkpointed stream, and the BERT patch (HF and Lightning doors) against the unpatched model."""


import pytest
import torch

from effplug.kernels.bias_dropout_residual import FusedBiasDropoutResidual, bias_dropout_residual, keep_mask
from effplug.profile import saved_bytes

SHAPES = [(3, 37), (5, 1, 130), (1, 8), (2, 3, 64)]


def _inputs(shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g).to(dtype), torch.randn(shape[-1], generator=g).to(dtype),
            torch.randn(*shape, generator=g).to(dtype))


def _bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_the_torch_reference_bit_for_bit(dtype, use_backend):
    for shape in SHAPES:
        for p in (0.0, 0.1, 0.5):
            x, b, r = _inputs(shape, dtype)
            outs, grads = [], []
            for backend in ("torch", "triton"):
                use_backend(backend)
                xs, bs = x.clone().requires_grad_(), b.clone().requires_grad_()
                out = bias_dropout_residual(xs, bs, r, p, seed=1234)
                out.backward(torch.ones_like(out))
                outs.append(out.detach())
                grads.append((xs.grad, bs.grad))
            assert torch.equal(_bits(outs[0]), _bits(outs[1])), (shape, p)
            assert torch.equal(_bits(grads[0][0]), _bits(grads[1][0])) and torch.allclose(
                grads[0][1].float(), grads[1][1].float())


def test_the_contract_and_its_gradients():
    x, b, r = _inputs((64, 256), torch.float32)
    x.requires_grad_(), b.requires_grad_(), r.requires_grad_()
    out = bias_dropout_residual(x, b, r, 0.25, seed=7)
    keep = keep_mask(7, x.numel(), 0.25, "cpu").view(x.shape)
    assert abs(keep.float().mean().item() - 0.75) < 0.01
    expected = r + torch.where(keep, (x + b) / 0.75, torch.zeros(()))
    assert torch.allclose(out, expected, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    assert torch.allclose(x.grad, torch.where(keep, grad / 0.75, torch.zeros(())), atol=1e-6)
    assert torch.allclose(b.grad, x.grad.sum(0), atol=1e-5) and torch.equal(r.grad, grad)
    with pytest.raises(ValueError, match=r"p=1.0: the dropout probability must be in \[0, 1\)"):
        bias_dropout_residual(x, b, r, 1.0, seed=0)
    with pytest.raises(ValueError, match="bias must be 1-D over x's last dimension"):
        bias_dropout_residual(x, b[:3], r, 0.1, seed=0)


def test_no_mask_is_saved_for_backward():
    x, b, r = _inputs((32, 512), torch.float32)
    x.requires_grad_()
    dropout = torch.nn.Dropout(0.1)
    unfused = saved_bytes(lambda: dropout(x + b) + r).activation_bytes
    fused = saved_bytes(lambda: bias_dropout_residual(x, b, r, 0.1, seed=3)).activation_bytes
    assert unfused >= x.numel() and fused == 0  # the goal is >= 30% of the block's activations; all of them go


def test_module_draws_a_new_mask_per_call_and_resumes_from_its_state():
    x, b, r = _inputs((16, 64), torch.float32)
    module = FusedBiasDropoutResidual(0.5, seed=11)
    first, second = module(x, b, r), module(x, b, r)
    assert not torch.equal(first, second) and int(module.calls) == 2
    resumed = FusedBiasDropoutResidual(0.5, seed=99)
    resumed.load_state_dict(module.state_dict())
    assert torch.equal(resumed(x, b, r), module(x, b, r))
    module.eval()
    assert torch.allclose(module(x, b, r), r + x + b)


def _tiny_bert(dropout=0.0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, hidden_dropout_prob=dropout,
                                     attention_probs_dropout_prob=0.0, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def test_bert_patch_matches_the_unpatched_model_and_trains():
    from effplug.hf import apply_fused_kernels

    ids = torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 0])
    plain, fused = _tiny_bert(), _tiny_bert()
    apply_fused_kernels(fused, seed=0)
    assert sum(hasattr(m, "fused_bias_dropout_residual") for m in fused.modules()) == 4  # 2 layers x 2 blocks
    assert sum(hasattr(m, "_effplug_layer_norm") for m in fused.modules()) == 5  # and the embeddings' norm
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (plain, fused)]
    for _ in range(3):
        losses = []
        for model, opt in zip((plain, fused), opts, strict=True):
            opt.zero_grad()
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    dropped = apply_fused_kernels(_tiny_bert(dropout=0.1), seed=0)
    loss = dropped(input_ids=ids, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="supported families: bert"):
        apply_fused_kernels(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="layer_norm is built for: bert, roberta, gpt2"):
        apply_fused_kernels(torch.nn.Sequential(torch.nn.Linear(2, 2)), layer_norm=True)
    with pytest.raises(TypeError, match="did you mean 'layer_norm'"):
        apply_fused_kernels(_tiny_bert(), layer_nrom=True)


def test_bert_patch_composes_with_qat_and_compressed_activations_and_the_lightning_door(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from effplug.callbacks import ActivationCompression, FusedKernels, QuantizationAwareTraining

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _tiny_bert(dropout=0.1)

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0], labels=batch[1]).loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(1, 64, (12,), generator=g), torch.tensor(i % 2)) for i in range(8)]
    module = Classifier()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         callbacks=[QuantizationAwareTraining(weight_bits=8, act_bits=8), FusedKernels(seed=0),
                                    ActivationCompression(bits=4, scope="model")])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    block = module.model.bert.encoder.layer[0].output
    assert int(block.fused_bias_dropout_residual.calls) == 2 and type(block.dense).__name__ == "QuantLinear"
    assert torch.isfinite(torch.stack([p.detach().abs().sum() for p in module.parameters()])).all()


def test_module_stream_needs_no_host_read_per_call():
    module = FusedBiasDropoutResidual(0.5, seed=5)
    x, b, r = _inputs((4, 16), torch.float32)
    module(x, b, r)
    module.calls.fill_(7)  # what the checkpoint says wins only through load_state_dict, read once there
    fresh = FusedBiasDropoutResidual(0.5, seed=0)
    fresh.load_state_dict({"seed": torch.tensor(5), "calls": torch.tensor(1)})
    assert torch.equal(fresh(x, b, r), module(x, b, r)) and int(fresh.calls) == 2 and int(module.calls) == 8
