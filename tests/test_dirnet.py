"""DIR-Net binarization: IMB weights, the DTE schedule, RBD distillation, settings and warnings."""

import math

import pytest
import torch
from conftest import digits_resnet as _digits_resnet

from effplug.quant import (
    binary,
)


def test_imb_weights_are_balanced_signs_with_power_of_two_scales():
    b = binary.SignQuantizer("weight", "dirnet", channel_dim=0)
    w = torch.randn(6, 3, 3, 3) + torch.arange(6).reshape(6, 1, 1, 1)
    out = b(w)
    for c in range(6):
        values = out[c].unique()
        assert len(values) == 2 and float(values[0]) == -float(values[1])
        assert math.log2(float(values[1])) == round(math.log2(float(values[1])))
        standardized = (w[c] - w[c].mean()) / w[c].std()
        assert torch.equal(out[c] > 0, standardized >= 0)


def test_dte_schedule_and_gradient():
    assert binary.dte_schedule(0.0, 0.1, 10.0) == pytest.approx((0.1, 10.0))
    assert binary.dte_schedule(1.0, 0.1, 10.0) == pytest.approx((10.0, 1.0))
    t, k = binary.dte_schedule(0.5, 0.1, 10.0)
    assert (t, k) == pytest.approx((1.0, 1.0))
    b = binary.SignQuantizer("act", "dirnet")
    b.t, b.k = 2.0, 1.0
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    b(x).sum().backward()
    torch.testing.assert_close(x.grad, 2.0 * (1 - torch.tanh(2.0 * x.detach()) ** 2))
    ste = binary.SignQuantizer("act", "sign_ste")
    x2 = x.detach().clone().requires_grad_(True)
    ste(x2).sum().backward()
    assert torch.equal(x2.grad, (x2.detach().abs() <= 1).float())


def test_rbd_gradient_equals_adding_the_distillation_loss():
    model = _digits_resnet(activation="hardtanh")
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    teacher = __import__("copy").deepcopy(model).eval()
    engine = binary.Binarizer(model, binary.BinarizationConfig(distill_weight=0.5))
    assert engine.layer_names == ["stage1.conv1", "stage1.conv2", "stage2.conv1", "stage2.conv2"]
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    hooked = {n: p.grad.clone() for n, p in model.named_parameters()}
    # the same loss written out by hand, with the hooks off
    engine.detach()
    model.zero_grad()
    features, targets = {}, {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: features.__setitem__(n, o))
               for n in engine.layer_names]
    handles += [teacher.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: targets.__setitem__(n, o))
                for n in engine.layer_names]
    with torch.no_grad():
        teacher(x)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    for n in engine.layer_names:
        s, t = features[n].flatten(1), targets[n].flatten(1)
        loss = loss + 0.5 * (s / s.norm(dim=1, keepdim=True) - t / t.norm(dim=1, keepdim=True)).pow(2).sum(1).mean()
    loss.backward()
    for h in handles:
        h.remove()
    for n, p in model.named_parameters():
        torch.testing.assert_close(hooked[n], p.grad, rtol=1e-4, atol=1e-6)
    assert engine.last_distill_loss > 0


def test_binarization_config_errors():
    with pytest.raises(ValueError, match="method='xnor' is not supported; use one of dirnet, sign_ste"):
        binary.BinarizationConfig(method="xnor")
    with pytest.raises(ValueError, match="no layers to binarize"):
        binary.Binarizer(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_binarizing_relu_inputs_says_why_the_network_collapses(caplog):
    from effplug.logs import forget

    forget("binarize")
    torch.manual_seed(0)
    relu_net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 4))
    engine = binary.Binarizer(relu_net, binary.BinarizationConfig())
    with caplog.at_level("WARNING", logger="effplug.quant"):
        relu_net(torch.randn(4, 8))
        relu_net(torch.randn(4, 8))
    warnings = [r for r in caplog.records if "never negative" in r.message]
    assert len(warnings) == 1 and "2" in warnings[0].message and "Hardtanh" in warnings[0].message
    assert relu_net[2].act_quant.nonnegative_input and engine.layer_names == ["2"]
    caplog.clear()
    forget("binarize")
    signed = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Hardtanh(), torch.nn.Linear(16, 16),
                                 torch.nn.Hardtanh(), torch.nn.Linear(16, 4))
    binary.Binarizer(signed, binary.BinarizationConfig())
    with caplog.at_level("WARNING", logger="effplug.quant"):
        signed(torch.randn(4, 8))
    assert not any("never negative" in r.message for r in caplog.records)
