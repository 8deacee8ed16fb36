"""Per-channel min/max and OCTAV's tail statistics: Triton against the torch reference bit for bit, each
against torch's own reductions, one read of the tensor in the meter, and the methods that now use them
(Mesa's range, the min-max/absmax observers, OCTAV) unchanged in what they compute."""

import pytest
import torch

from effplug.kernels.channel_stats import channel_min_max, octav_tail

CASES = [((3, 37), 1), ((4, 5, 6, 7), 1), ((2, 9, 300), 2), ((5,), 0), ((2, 3, 5000), 1), ((700, 33), 1),
         ((6, 4, 3), 0)]


def _reference(x, axis):
    others = tuple(d for d in range(x.ndim) if d != axis)
    if not others:
        return x.float(), x.float()
    return x.amin(others).float(), x.amax(others).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block", [None, 16])
def test_channel_min_max_triton_matches_torch_bit_for_bit(dtype, block, use_backend, monkeypatch):
    if block:  # small blocks: programs loop over rows, and runs split into several chunks
        from effplug.kernels import triton_kernels

        monkeypatch.setattr(triton_kernels, "STATS_BLOCK", block)
    gen = torch.Generator().manual_seed(0)
    for shape, axis in CASES:
        x = torch.randn(*shape, generator=gen).to(dtype)
        x.view(-1)[x.numel() // 2] = float("nan") if shape == (2, 9, 300) else x.view(-1)[x.numel() // 2]
        results = []
        for backend in ("torch", "triton"):
            use_backend(backend)
            results.append(channel_min_max(x, axis))
        (lo0, hi0), (lo1, hi1) = results
        assert torch.equal(lo0.nan_to_num(7.0), lo1.nan_to_num(7.0)) and torch.equal(hi0.nan_to_num(7.0),
                                                                                      hi1.nan_to_num(7.0))
        ref_lo, ref_hi = _reference(x, axis)
        assert torch.equal(lo1.isnan(), ref_lo.isnan())  # a NaN channel reads NaN, as torch.amin gives
        assert torch.equal(lo1.nan_to_num(7.0), ref_lo.nan_to_num(7.0)), (shape, axis)
        assert torch.equal(hi1.nan_to_num(7.0), ref_hi.nan_to_num(7.0)), (shape, axis)


def test_octav_tail_matches_torch_and_its_float64_definition(use_backend):
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(3, 5000, generator=gen).abs()
    clip = torch.tensor([0.5, 1.0, 9.0])
    results = []
    for backend in ("torch", "triton"):
        use_backend(backend)
        results.append(octav_tail(m, clip))
    (t0, c0), (t1, c1) = results
    assert torch.equal(t0, t1) and torch.equal(c0, c1)
    outside = m.double() > clip.double()[:, None]
    assert torch.equal(c0, outside.sum(1)) and c0[2] == 0
    assert torch.allclose(t0.double(), (m.double() * outside).sum(1), rtol=1e-7)
    with pytest.raises(ValueError, match="2-D float32"):
        octav_tail(m.half(), clip)


def test_one_read_of_the_tensor_and_the_observers_and_mesa_use_it():
    from effplug.compress.config import CompressionConfig
    from effplug.compress.mesa import MesaMethod
    from effplug.movement import data_movement
    from effplug.quant import estimators

    x = torch.randn(4, 8, 16)
    report = data_movement(lambda: channel_min_max(x, 1))
    op = report.per_op["effplug.channel_min_max"]
    assert (op.calls, op.read, op.written) == (1, x.numel() * 4, 2 * 8 * 4)
    assert report.total.bytes == op.bytes  # the reference's two reductions are one kernel's read
    lo, hi = estimators.minmax_range(x, 1)
    assert torch.equal(lo, x.amin((0, 2)).clamp_max(0)) and torch.equal(hi, x.amax((0, 2)).clamp_min(0))
    assert torch.equal(estimators.absmax_clip(x), x.abs().max()) and estimators.absmax_clip(x).dim() == 0
    assert torch.equal(estimators.absmax_clip(x, 2), x.abs().amax((0, 1)))
    clip = estimators.octav_clip(x, 4)
    outside = x.abs() > clip
    fixed_point = (x.abs() * outside).sum() / (4.0 ** -4 / 3 * (~outside).sum() + outside.sum())
    assert torch.allclose(clip, fixed_point, rtol=1e-5)  # eq. 6's fixed point
    mesa = MesaMethod(CompressionConfig(method="mesa", bits=8))
    shift, clip_range, lo, hi = mesa._update_range("0", x, 1)
    assert torch.equal(lo, x.amin((0, 2))) and torch.equal(hi, x.amax((0, 2)))
    # a NaN batch is kept exact and leaves the running range as it was (it used to poison it)
    bad = x.clone()
    bad[0, 3, 0] = float("nan")
    assert mesa.encode(bad, 0) is None and "inf/NaN" in mesa.decline_reason
    assert torch.equal(mesa.shift["0"], shift) and torch.equal(mesa.clip["0"], clip_range)
    assert mesa.encode(x, 0) is not None and bool(mesa.shift["0"].isfinite().all())
    with pytest.raises(ValueError, match="non-empty"):
        channel_min_max(torch.zeros(0, 3), 1)
