"""LUQ: the gradient quantizer's unbiasedness and underflow, the INT4 forward, SMP, the model swap."""

import pytest
import torch

from effplug.kernels import log_quantize
from effplug.quant.luq import LUQConfig, SAWBQuantizer, prepare_luq, sawb_clip, set_luq_enabled


def test_log_quantizer_is_unbiased_at_the_rate_its_variance_predicts():
    g = torch.randn(4096) * torch.exp(torch.randn(4096) * 2) * 1e-3
    draws = torch.stack([log_quantize(g, 4, seed=s) for s in range(400)])
    bias = draws.mean(0) - g
    # per element, the sample mean's standard error is sqrt(var / n); measured variance of the draws
    stderr = draws.var(0).sqrt() / 20
    z = bias[stderr > 0] / stderr[stderr > 0]
    assert z.abs().mean() < 1.0  # |z| of an unbiased mean averages sqrt(2/pi) = 0.80
    assert float(z.mean().abs()) < 0.1


def test_underflow_prunes_stochastically_below_max_over_128():
    g = torch.tensor([1.0] + [1.0 / 512] * 20_000)  # alpha = 1/128; 1/512 = alpha/4
    draws = log_quantize(g, 4, seed=3)
    small = draws[1:]
    assert set(small.unique().tolist()) <= {0.0, 1.0 / 128}
    assert abs(float((small > 0).float().mean()) - 0.25) < 0.02  # kept with probability |g| / alpha
    levels = {1.0 / 128 * 2**k for k in range(8)} | {0.0}
    u = torch.rand(1000)
    u[0] = 1.0  # max|g| = 1: the levels are 2^-7 ... 2^0
    assert set(log_quantize(u, 4, seed=1).abs().unique().tolist()) <= levels


def test_sawb_forward_is_int4():
    x = torch.randn(1000)
    q = SAWBQuantizer("weight")(x)
    scale = float(sawb_clip(x)) / 8
    codes = q / scale
    torch.testing.assert_close(codes, torch.round(codes), atol=1e-4, rtol=0)
    assert codes.min() >= -8 - 1e-4 and codes.max() <= 7 + 1e-4  # q / scale rounds, as assert_close allows
    act = SAWBQuantizer("act")(torch.rand(1000))
    assert act.min() >= 0


def test_smp_averages_independent_samples_and_cuts_variance():
    torch.manual_seed(0)
    grads = {}
    for smp in (1, 4):
        model = prepare_luq(torch.nn.Sequential(torch.nn.Linear(16, 16)), LUQConfig(smp=smp, seed=smp))
        x = torch.randn(64, 16)
        draws = []
        for _ in range(40):
            model.zero_grad()
            model(x).pow(2).sum().backward()
            draws.append(model[0].weight.grad.clone())
        grads[smp] = torch.stack(draws)
    assert grads[4].var(0).mean() < 0.5 * grads[1].var(0).mean()


def test_prepare_and_fine_tune_switch():
    model = prepare_luq(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
    x = torch.randn(4, 8)
    quantized = model(x)
    set_luq_enabled(model, False)
    plain = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, model[0].weight, model[0].bias)),
                                       model[2].weight, model[2].bias)
    torch.testing.assert_close(model(x), plain)
    assert not torch.allclose(quantized, plain)
    with pytest.raises(ValueError, match="use bits=4"):
        LUQConfig(bits=8)
    with pytest.raises(ValueError, match="smp=0"):
        LUQConfig(smp=0)


def test_a_resumed_run_continues_the_gradient_quantizers_draws(tmp_path):
    def build():
        torch.manual_seed(0)
        return prepare_luq(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)),
                           seed=3)

    def train(model, steps, first):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(first, first + steps):
            gen = torch.Generator().manual_seed(step)
            model.zero_grad()
            model(torch.randn(8, 16, generator=gen)).square().mean().backward()
            optimizer.step()

    model = build()
    train(model, 2, 0)
    torch.save(model.state_dict(), tmp_path / "luq.pt")
    train(model, 2, 2)
    resumed = build()
    resumed.load_state_dict(torch.load(tmp_path / "luq.pt", weights_only=True))
    assert int(resumed[0].luq_seed) != int(build()[0].luq_seed)  # the position came back, not the start
    train(resumed, 2, 2)
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), model.parameters(), strict=True))
    assert int(model[0].luq_seed) != int(model[2].luq_seed)  # one stream per layer
