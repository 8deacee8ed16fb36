"""The fused kernels behind COMET, DIVISION, the lossless payloads and the calibration probes: Triton against
the torch reference bit for bit (under TRITON_INTERPRET=1), each against the unfused definition it replaced,
and the methods that use them. Also the calibration round spread over steps (``probes_per_step``)."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effplug.codecs.lossless import decode_rectified, decode_two_level, pack_bool, two_level, unpack_bool
from effplug.compress import ActivationCompressor, CompressionConfig
from effplug.compress import engine as engine_module
from effplug.compress.comet import CometMethod
from effplug.kernels.error_bounded import code_width, error_bounded_decode, error_bounded_pack, error_bounded_stats
from effplug.kernels.grad_error import squared_error
from effplug.kernels.lowpass import lowpass_residual_dequantize, lowpass_residual_quantize, upsample
from effplug.kernels.pack import quantize_pack, unpack_dequantize

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _both(use_backend, fn):
    out = []
    for backend in ("torch", "triton"):
        use_backend(backend)
        out.append(fn())
    return out


def _assert_equal(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


# -- COMET: error-bounded codes ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_bounded_codes_triton_matches_torch_and_the_sz_definition(dtype, use_backend):
    gen = torch.Generator().manual_seed(0)
    for n, group in ((77, 32), (1000, 64), (4096, 128), (5001, 256)):
        x = (torch.randn(n, generator=gen) * 3).to(dtype)
        for eb in (1e-3, 0.03, 0.4, 6.0):
            step = 2 * eb

            def run():
                zero, top, err = error_bounded_stats(x, step, group)
                width = code_width(float(top.max()))
                data = error_bounded_pack(x, zero, step, group, width)
                return zero, top, err, width, data, error_bounded_decode(data, zero, step, group, width, x.shape, dtype)

            got, ref = _both(use_backend, run)
            _assert_equal(got, ref)
            zero, top, err, width, data, decoded = got
            # the unfused definition: groups padded with the last value, codes against the group minimum
            padded = torch.cat([x.float(), x.float()[-1:].expand((-n) % group)]).view(-1, group)
            assert torch.equal(zero, padded.amin(1))
            q = torch.floor((padded - zero[:, None]) / step + 0.5)
            assert torch.equal(top, q.amax(1))
            narrower = [w for w in (1, 2, 4, 8, 16) if w < width]
            assert top.max() < 2**width and (not narrower or top.max() >= 2 ** narrower[-1])  # the narrowest fit
            assert float(err.max()) == float((decoded.float() - x.float()).abs().max())  # the check is decode's error
            if dtype == torch.float32:  # the bound, up to the rounding of zero + q * step
                assert float(err.max()) <= eb + 4 * torch.finfo(dtype).eps * float(x.abs().max())


def test_error_bounded_stats_flag_inf_and_nan(use_backend):
    x = torch.randn(300)
    x[5], x[200] = float("nan"), float("inf")
    for zero_top_err in _both(use_backend, lambda: error_bounded_stats(x, 0.1, 64)):
        err = zero_top_err[2]
        assert err[0] == float("inf") and err[3] == float("inf") and torch.isfinite(err[[1, 2, 4]]).all()


def test_comet_keeps_a_nonfinite_tensor_exact_and_says_why():
    method = CometMethod(CompressionConfig(method="comet", error_bound=0.01, error_mode="abs"))
    x = torch.randn(4096)
    assert method.encode(x, 0) is not None and method.fallbacks == 0
    x[7] = float("nan")
    assert method.encode(x, 0) is None and method.fallbacks == 1
    assert "error bound" in method.decline_reason


# -- DIVISION: the residual formed inside the quantizer's pass --------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_lowpass_residual_triton_matches_torch_and_the_unfused_chain(dtype, use_backend):
    gen = torch.Generator().manual_seed(1)
    for shape, window in (((2, 3, 17, 13), (8, 8)), ((1, 4, 33, 24), (8, 1)), ((2, 5, 3, 40), (3, 8))):
        x = torch.randn(*shape, generator=gen).to(dtype)
        lfc = F.avg_pool2d(x.float(), window, stride=window, ceil_mode=True).to(torch.bfloat16)
        for bits, stochastic in ((2, True), (4, False), (8, True)):
            def run():
                qt = lowpass_residual_quantize(x, lfc, window, bits, 32, stochastic, seed=5)
                return qt.data, qt.scale, qt.zero, lowpass_residual_dequantize(qt, lfc, window)

            got, ref = _both(use_backend, run)
            _assert_equal(got, ref)
            use_backend("torch")
            residual = x.float() - upsample(lfc, window, shape[-2:])
            unfused = quantize_pack(residual, bits, 32, stochastic, 5, torch.bfloat16)
            assert torch.equal(unfused.data, got[0]) and torch.equal(unfused.scale, got[1])
            expected = (upsample(lfc, window, shape[-2:]) + unpack_dequantize(unfused)).to(dtype)
            assert torch.equal(got[3], expected)


def test_lowpass_residual_rejects_a_mismatched_lowpass():
    with pytest.raises(ValueError, match="lfc"):
        lowpass_residual_quantize(torch.randn(2, 3, 16, 16), torch.zeros(2, 3, 3, 3, dtype=torch.bfloat16), (8, 8), 2)


# -- lossless payloads: 1-bit masks ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_bit_masks_triton_match_torch_and_round_trip(dtype, use_backend):
    gen = torch.Generator().manual_seed(2)
    for n in (1, 7, 8, 100, 5001):
        relu = torch.randn(n, generator=gen).to(dtype).relu()
        flags = torch.rand(n, generator=gen) > 0.5
        dropout = (torch.rand(n, generator=gen) > 0.3).to(dtype) * 1.25
        dropout[0] = 1.25
        noisy = torch.randn(n, generator=gen).to(dtype) + 3
        inner = torch.randn(n, generator=gen).to(dtype)

        def run():
            flag_p, sign_p, level_p = pack_bool(flags), pack_bool(relu, positive=True), two_level(dropout)
            return (flag_p.data, unpack_bool(flag_p), sign_p.data, unpack_bool(sign_p), level_p.mask.data,
                    level_p.value, decode_two_level(level_p), decode_rectified(sign_p, inner),
                    two_level(noisy) is None or n == 1)

        got, ref = _both(use_backend, run)
        _assert_equal(got, ref)
        assert torch.equal(got[1], flags) and torch.equal(got[3], relu > 0) and torch.equal(got[6], dropout)
        tiny = torch.finfo(dtype).tiny
        assert torch.equal(got[7], torch.where(relu > 0, inner.clamp_min(tiny), torch.zeros((), dtype=dtype)))
        assert got[8]


def test_two_level_refuses_nan_negatives_and_all_zeros(use_backend):
    for backend in ("torch", "triton"):
        use_backend(backend)
        mask = torch.tensor([0.0, 2.0, 2.0, 0.0] * 40)
        assert two_level(mask) is not None
        for bad in (torch.where(mask > 0, -mask, mask), torch.zeros(160), mask.clone().index_fill_(0, torch.tensor([3]), float("nan")),
                    mask.clone().index_fill_(0, torch.tensor([3]), 1.0)):
            assert two_level(bad) is None


# -- calibration probes ------------------------------------------------------------------------------------


def test_squared_error_matches_its_float64_definition(use_backend):
    gen = torch.Generator().manual_seed(3)
    for shape in ((5,), (300, 7), (4097,)):
        a, b = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
        exact = torch.stack([(a - b).double().square().sum(), b.double().square().sum()])  # the fp32 difference
        for got in _both(use_backend, lambda a=a, b=b: squared_error(a, b)):
            assert got.dtype == torch.float64 and torch.allclose(got, exact, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="one shape"):
        squared_error(torch.zeros(3), torch.zeros(4))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 4))


def _step(engine, model, x):
    model.zero_grad()
    with engine:
        loss = model(x).square().mean()
        engine.calibrate(loss)
        loss.backward()


def _engine(model):
    return ActivationCompressor(model, method="gact", bits=2, recalibrate_every=100, seed=0)  # one probe a step


def test_a_round_longer_than_a_quarter_interval_is_reported_with_its_knob(caplog):
    x = torch.randn(64, 32)
    model = _mlp()
    engine = ActivationCompressor(model, method="gact", bits=2, recalibrate_every=4, seed=0)
    with caplog.at_level("WARNING", logger="effplug.compress"):
        _step(engine, model, x)
    assert "spans 3 steps" in caplog.text and "probes_per_step" in caplog.text


def test_a_calibration_round_spreads_over_steps_and_resumes_exactly(monkeypatch):
    x = torch.randn(64, 32)
    probes = []
    measure = engine_module.measure_gradient_effects
    monkeypatch.setattr(engine_module, "measure_gradient_effects",
                        lambda loss, params, recorded, set_probe: probes.append(len(recorded))
                        or measure(loss, params, recorded, set_probe))
    model = _mlp()
    engine = _engine(model)
    steps = 0
    while not engine.method.calibrations:
        _step(engine, model, x)
        steps += 1
        if steps == 2:
            buf = io.BytesIO()
            torch.save(engine.state_dict(), buf)
    slots = engine._slot
    assert slots >= 3 and steps == slots and probes == [1] * slots  # each step: a reference and one probe
    assert len(engine.method.allocation) == slots and engine.method.average_bits() <= 2
    assert len(set(engine.method.allocation.tolist())) > 1

    buf.seek(0)
    resumed = _engine(model)
    resumed.load_state_dict(torch.load(buf, weights_only=True))  # mid-round: two tensors measured
    while not resumed.method.calibrations:
        _step(resumed, model, x)
    assert torch.equal(resumed.method.sensitivity, engine.method.sensitivity)
    assert torch.equal(resumed.method.allocation, engine.method.allocation)


def test_probes_per_step_rejects_bad_values():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="probes_per_step"):
            CompressionConfig(method="gact", probes_per_step=bad)


def test_the_new_entry_points_reject_bad_input_and_say_what_to_do():
    from effplug.comm import make_compressor

    x = torch.randn(256)
    with pytest.raises(ValueError, match="power of two >= 8"):
        error_bounded_stats(x, 0.1, 12)
    with pytest.raises(ValueError, match="width=3 is not supported; use one of"):
        error_bounded_pack(x, torch.zeros(8), 0.1, 32, 3)
    with pytest.raises(ValueError, match="non-empty"):
        error_bounded_stats(torch.empty(0), 0.1, 32)
    compressor = make_compressor("topk", ratio=0.01)
    compressor.overlaps_backward = "sometimes"
    with pytest.raises(ValueError, match="use 'auto', True or False"):
        compressor.bind(nn.Linear(2, 2))
