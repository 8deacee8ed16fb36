"""Host syncs on the hot path, counted on a GPU with ``torch.cuda.set_sync_debug_mode`` (skipped without one;
``benchmarks/gpu_suite.py`` runs it). A compressed training step must not make the host wait per saved tensor."""

import pytest
import torch
from torch import nn

from effplug.compress import ActivationCompressor
from effplug.profile import count_host_syncs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs exist only against a GPU")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.Tanh(), nn.Linear(1024, 8)).cuda()


@pytest.mark.parametrize("method", ["actnn", "division"])
def test_a_compressed_step_has_no_host_sync_per_tensor(method):
    model = _model()
    x = torch.randn(64, 256, device="cuda")

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    with ActivationCompressor(model, method=method, bits=4, seed=0) as engine:
        step()  # the first step decides per slot, once, whether a tensor is rectified
        assert count_host_syncs(step) == 0
        assert engine.last_report.ratio > 4  # the step really compressed
    assert count_host_syncs(step) == 0  # and the plain step, for reference


def test_the_kernels_of_a_compressed_tensor_do_not_sync():
    from effplug.kernels import quantize_pack, unpack_dequantize

    x = torch.randn(1 << 20, device="cuda", dtype=torch.bfloat16)
    packed = quantize_pack(x, 4, 128, True, seed=1, validate=False)
    assert count_host_syncs(lambda: unpack_dequantize(quantize_pack(x, 4, 128, True, seed=1, validate=False))) == 0
    assert packed.data.is_cuda
