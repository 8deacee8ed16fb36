"""LNS format, Madam and LNS-Madam against their formulas (issue 6 groundwork: the optimizers)."""

import math

import pytest
import torch

from effplug.optim import LNSMadam, Madam
from effplug.quant.lns import LNSFormat, lns_quantize


@pytest.mark.parametrize("bits, gamma", [(8, 8), (6, 4), (8, 1)])
def test_lns_round_trip_stays_within_its_grid_error(bits, gamma):
    fmt = LNSFormat(bits, gamma)
    x = torch.randn(20_000) * torch.exp(torch.randn(20_000))
    negative, codes, scale = fmt.encode(x)
    y = fmt.decode(negative, codes, scale)
    smallest = scale * 2.0 ** (-fmt.max_code / gamma)
    representable = x.abs() >= smallest
    rel = ((y - x).abs() / x.abs())[representable]
    assert rel.max() <= fmt.relative_error_bound * (1 + 1e-5)
    assert torch.equal(torch.sign(y[representable]), torch.sign(x[representable]))
    assert codes.max() <= fmt.zero_code and codes.min() >= 0
    torch.testing.assert_close(lns_quantize(x, bits, gamma), y)


def test_lns_tiny_values_go_to_zero_or_the_smallest_level():
    fmt = LNSFormat(4, 1)  # codes 0..6, zero code 7: magnitudes 1, 1/2, ..., 1/64
    x = torch.tensor([1.0, 1 / 64, 1 / 200, -1 / 100, 0.0])
    y = fmt.decode(*fmt.encode(x))
    assert y.tolist() == [1.0, 1 / 64, 0.0, -1 / 64, 0.0]


def test_madam_update_matches_its_formula_by_hand():
    w = torch.nn.Parameter(torch.tensor([0.5, -2.0, 1.0]))
    opt = Madam([w], lr=0.1)
    w.grad = torch.tensor([0.2, 0.4, -0.1])
    opt.step()
    # step 1: v = 0.001 g^2, corrected v / (1 - 0.999) = g^2, so g* = sign(g)
    w_max = 3 * math.sqrt((0.25 + 4 + 1) / 3)
    expected = [0.5 * math.exp(-0.1 * 1 * 1), -2.0 * math.exp(-0.1 * 1 * -1), 1.0 * math.exp(-0.1 * -1 * 1)]
    expected = [max(-w_max, min(w_max, e)) for e in expected]
    torch.testing.assert_close(w.detach(), torch.tensor(expected))
    # step 2 with a different gradient: v = 0.999*0.001*g1^2 + 0.001*g2^2, corrected by 1 - 0.999^2
    w.grad = torch.tensor([0.1, 0.4, 0.3])
    before = w.detach().clone()
    opt.step()
    g1, g2 = torch.tensor([0.2, 0.4, -0.1]), torch.tensor([0.1, 0.4, 0.3])
    v = (0.999 * 0.001 * g1**2 + 0.001 * g2**2) / (1 - 0.999**2)
    torch.testing.assert_close(w.detach(), before * torch.exp(-0.1 * torch.sign(before) * g2 / v.sqrt()))


def test_lns_madam_keeps_weights_on_the_grid_and_learns():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    model = torch.nn.Linear(8, 1, bias=False)
    # multiplicative updates keep each weight's sign: the target shares the signs, magnitudes differ
    target = x @ (model.weight.detach() * torch.exp(torch.randn(1, 8) * 0.7)).t()
    opt = LNSMadam(model.parameters(), lr=1 / 8, bits=8, gamma=8)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (model(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    state = opt.state[model.weight]
    codes = -torch.log2(model.weight.detach().abs() / state["max"]) * 8
    torch.testing.assert_close(codes, torch.round(codes), atol=1e-3, rtol=0)  # on the grid
    assert losses[-1] < 0.5 * losses[0]
    saved = opt.state_dict()
    import io

    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # plain tensors and ints


def test_bad_optimizer_settings_say_what_to_do():
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="multiple of 1/gamma"):
        LNSMadam(p, lr=0.01, gamma=8)
    with pytest.raises(ValueError, match="lr=0 must be > 0"):
        Madam(p, lr=0)
    with pytest.raises(ValueError, match="bits=2 is not supported"):
        LNSFormat(bits=2)


@pytest.mark.parametrize("make", [lambda ps: Madam(ps, lr=0.01), lambda ps: LNSMadam(ps, lr=1 / 8)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nonfinite_gradient_skips_the_step_and_never_freezes_weights(make, bad, caplog):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    opt = make(layer.parameters())
    layer(torch.randn(16, 8)).square().mean().backward()
    opt.step()
    before = [p.detach().clone() for p in layer.parameters()]
    state_before = {k: v.clone() for k, v in opt.state[layer.weight].items() if isinstance(v, torch.Tensor)}
    layer.weight.grad[0, 0] = bad
    with caplog.at_level("WARNING", logger="effplug.optim"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(layer.parameters(), before, strict=True))
    assert all(torch.equal(opt.state[layer.weight][k], v) for k, v in state_before.items())
    assert opt.skipped_steps == 1
    opt.zero_grad()
    layer(torch.randn(16, 8)).square().mean().backward()
    opt.step()
    assert not torch.equal(layer.weight[0, 0], before[0][0, 0])  # the touched weight still moves


def test_a_scheduler_that_leaves_the_lns_grid_raises_what_to_do():
    layer = torch.nn.Linear(8, 4)
    opt = LNSMadam(layer.parameters(), lr=1 / 8)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=1 / 16)
    layer(torch.randn(4, 8)).sum().backward()
    opt.step()
    scheduler.step()  # lr*gamma = 1/16: round() would make the update 0 and freeze every weight
    with pytest.raises(ValueError, match="whole number of grid steps"):
        opt.step()


def test_lns_config_and_keywords_convert_the_same_way():
    from torch import nn

    from effplug.quant.lns import LNSConfig, prepare_lns

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))

    x = torch.randn(5, 6)
    by_config = prepare_lns(mlp(), LNSConfig(bits=6, gamma=4, activations=True, exclude="2"))
    by_keywords = prepare_lns(mlp(), bits=6, gamma=4, activations=True, exclude="2")
    assert torch.equal(by_config(x), by_keywords(x))
    assert by_config._effplug_coverage.converted == ["0"]
