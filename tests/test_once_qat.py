"""once-QAT (vertical-layered, Wu et al.): nested codes, width switching, per-width statistics, training."""

import math

import pytest
import torch
from conftest import digits_resnet as _digits_resnet

from effplug.quant import (
    QATConfig,
    export_quantized,
    integer_model,
    multi_bit_loss,
    nested,
    quantize_model,
    set_bits,
)


def test_cascade_codes_are_nested_bit_planes():
    q = nested.NestedWeightQuantizer((2, 3, 4, 8), channel_dim=0, channels=5)
    w = torch.randn(5, 64)
    q(w)
    top = q.codes(w, 8).long()
    for b in (2, 3, 4):
        assert torch.equal(q.codes(w, b).long(), top >> (8 - b))
        assert q.codes(w, b).max() <= 2**b - 1
    # each width is the mid-rise quantizer of its own step (cascade of floors == one floor)
    step = q.step.detach().reshape(-1, 1)
    for b in (2, 4, 8):
        q.bits = b
        s_b = step * 2 ** (8 - b)
        direct = torch.clamp(torch.floor(w / s_b + 2 ** (b - 1)), 0, 2**b - 1)
        torch.testing.assert_close(q(w), (direct + 0.5 - 2 ** (b - 1)) * s_b)


def test_once_qat_switches_widths_sums_losses_and_exports_every_width():
    model = quantize_model(_digits_resnet(), QATConfig(bit_widths=[2, 4, 8], act_bits=8))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model(x)  # train-mode forward: ranges initialized; eval keeps them fixed for the comparison
    model.eval()
    losses = {}
    for b in (2, 4, 8):
        set_bits(model, b)
        losses[b] = torch.nn.functional.cross_entropy(model(x), y).item()
    total, per_width = multi_bit_loss(model, lambda: torch.nn.functional.cross_entropy(model(x), y))
    assert float(total) == pytest.approx(sum(losses.values()), rel=1e-5)
    assert {b: float(v) for b, v in per_width.items()} == pytest.approx(losses, rel=1e-5)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())
    for b in (2, 4, 8):
        set_bits(model, b)
        with torch.no_grad():
            torch.testing.assert_close(integer_model(model, export_quantized(model))(x), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="bits=3 is not one of this model's bit_widths"):
        set_bits(model, 3)
    with pytest.raises(ValueError, match="no once-QAT layers"):
        set_bits(quantize_model(_digits_resnet(), QATConfig()), 4)


def test_once_qat_keeps_batchnorm_statistics_per_width_through_a_checkpoint(tmp_path):
    config = QATConfig(bit_widths=[2, 8], act_bits=8)
    model = quantize_model(_digits_resnet(), config)
    x = torch.randn(32, 1, 8, 8)
    for _ in range(3):
        multi_bit_loss(model, lambda: model(x).logsumexp(-1).mean())[0].backward()
    bn = model.stage1.bn1
    assert bn.running_var is bn.running_var_w8  # the live statistics are the current width's slot
    assert not torch.allclose(bn.running_var_w2, bn.running_var_w8)
    set_bits(model, 2)
    assert bn.running_var is bn.running_var_w2 and int(bn.effplug_width) == 2
    model.eval()
    with torch.no_grad():
        expected = model(x)
    torch.save(model.state_dict(), tmp_path / "once.pt")  # saved at width 2
    fresh = quantize_model(_digits_resnet(), config)
    fresh.load_state_dict(torch.load(tmp_path / "once.pt", weights_only=True))
    fresh.eval()
    assert fresh.stage1.bn1.running_var is fresh.stage1.bn1.running_var_w2
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected)
    set_bits(fresh, 8)
    torch.testing.assert_close(fresh.stage1.bn1.running_var, bn.running_var_w8)


@pytest.mark.parametrize("layers, first_last_bits", [(1, 8), (3, None)])
def test_once_qat_trains_at_lr_0_1_without_first_last_layers(layers, first_last_bits):
    torch.manual_seed(0)
    model = quantize_model(torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(layers)]),
                           QATConfig(bit_widths=(2, 4, 8), act_bits=8, first_last_bits=first_last_bits))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 16)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss, per_width = multi_bit_loss(model, lambda: model(x).square().mean())
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]  # it diverged to NaN / 1e12 before
    assert all(float(q.step.abs().max()) < 1 for q in nested.nested_quantizers(model))
