"""The data-movement meter against a hand count on a small MLP, its attribution to modules and op kinds, and
``effplug profile``."""

import pytest
import torch

from effplug import cli
from effplug.movement import data_movement, op_kind
from effplug.profile import data_movement as from_profile


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_forward_matches_a_hand_count():
    model, x = _mlp(), torch.randn(4, 8)
    report = data_movement(lambda: model(x), model)
    # addmm(bias, x, W.t()): reads 64 + 128 + 512 B, writes 4x16 fp32; W.t() is a view and moves nothing
    assert (report.per_module["0"].read, report.per_module["0"].written, report.per_module["0"].flops) == \
        (64 + 128 + 512, 256, 2 * 4 * 8 * 16)
    assert (report.per_module["1"].read, report.per_module["1"].written) == (256, 256)  # relu
    assert (report.per_module["2"].read, report.per_module["2"].written, report.per_module["2"].flops) == \
        (16 + 256 + 256, 64, 2 * 4 * 16 * 4)
    assert report.total.bytes == 704 + 256 + 512 + 528 + 64 and report.total.flops == 1536
    assert report.arithmetic_intensity == pytest.approx(1536 / 2064)
    assert report.elementwise_and_normalization_share == pytest.approx(512 / 2064)
    assert set(report.per_kind) == {"contraction", "elementwise"} and report.per_op["addmm"].calls == 2


def test_backward_is_counted_per_leaf_module_and_the_model_is_unchanged():
    model, x = _mlp(), torch.randn(4, 8)
    expected = torch.func.functional_call(model, dict(model.named_parameters()), (x,))
    report = data_movement(lambda: model(x).sum().backward(), model)
    assert "2 (backward)" in report.per_module and "1 (backward)" in report.per_module
    # grad wrt layer 2's input and weight (2·4·4·16 each), layer 0's weight (2·16·4·8); x needs no gradient
    assert report.per_op["mm"].calls == 3 and report.per_op["mm"].flops == 512 + 512 + 1024
    assert report.per_op["threshold_backward"].calls == 1 and report.per_module["1 (backward)"].bytes == 3 * 256
    assert torch.equal(model(x), expected) and model[0].weight.grad is not None  # hooks removed, output intact
    assert from_profile(lambda: model(x), model).total.bytes == 2064
    assert op_kind(torch.ops.aten.native_layer_norm.default) == "normalization"


def test_effplug_profile_prints_the_report(capsys):
    pytest.importorskip("transformers")
    assert cli.main(["profile", "--model", "bert-tiny", "--backward", "--seq", "16"]) == 0
    out = capsys.readouterr().out
    assert "| kind | calls |" in out and "| normalization |" in out and "elementwise + normalization move" in out
    assert cli.main(["profile", "--model", "t5-huge"]) == 2
    assert "choose from bert-tiny" in capsys.readouterr().err


def test_a_fused_op_counts_once_as_its_kernel_moves_bytes():
    """RMSNorm's CPU reference runs a chain of aten ops; the meter counts the one kernel: x and w read, y and
    rstd written."""
    from effplug.kernels.rms_norm import rms_norm
    from effplug.movement import data_movement

    x, w = torch.randn(8, 16), torch.ones(16)
    report = data_movement(lambda: rms_norm(x, w))
    fused = report.per_op["effplug.rms_norm"]
    assert (fused.calls, fused.read, fused.written) == (1, 8 * 16 * 4 + 16 * 4, 8 * 16 * 4 + 8 * 4)
    assert report.total.bytes == fused.bytes  # nothing of the reference's chain leaks into the count
    assert report.per_kind["normalization"].bytes == fused.bytes
    xs = x.clone().requires_grad_()
    backward = data_movement(lambda: rms_norm(xs, w).sum().backward())
    assert backward.per_op["effplug.rms_norm_backward"].calls == 1
