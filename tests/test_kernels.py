import math

import pytest
import torch

from effplug.kernels import (
    dispatch,
    fake_quantize,
    log_quantize,
    packed_nbytes,
    pow2_decode,
    pow2_encode,
    pow2_encode_unit,
    pow2_round,
    quantize_pack,
    topk_select,
    unpack_dequantize,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def odd_inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    wide = torch.randn(64, 130, generator=gen) * 3
    return {
        "n1": torch.randn(1, generator=gen).to(dtype),
        "n7": torch.randn(7, generator=gen).to(dtype),
        "n4097": (torch.randn(4097, generator=gen) * 5 + 1).to(dtype),
        "noncontig": wide.to(dtype)[:, ::2],
        "empty": torch.empty(0, 3, dtype=dtype),
    }


def per_element_scale(qt):
    return qt.scale.float().repeat_interleave(qt.group_size)[: qt.numel].view(qt.shape)


# -- round-trip error bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("group_size", [32, 128, 4096])
def test_nearest_error_is_at_most_half_a_step(backend, bits, group_size):
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(bits)) * 4
    qt = quantize_pack(x, bits, group_size)
    err = (unpack_dequantize(qt) - x).abs()
    assert (err <= per_element_scale(qt) / 2 + 1e-5).all()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_stochastic_error_is_below_one_step(backend, bits):
    x = torch.randn(6000, generator=torch.Generator().manual_seed(1))
    qt = quantize_pack(x, bits, 64, stochastic=True, seed=11)
    err = (unpack_dequantize(qt) - x).abs()
    assert (err <= per_element_scale(qt) + 1e-5).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip_keeps_shape_dtype_and_device(dtype):
    x = torch.randn(4, 33, 5).to(dtype)
    out = unpack_dequantize(quantize_pack(x, 4))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert unpack_dequantize(quantize_pack(x, 4), dtype=torch.float32).dtype == torch.float32


def test_constant_group_is_exact():
    x = torch.full((300,), 0.375)
    assert torch.equal(unpack_dequantize(quantize_pack(x, 2, 32)), x)


def test_stochastic_rounding_is_unbiased_at_the_expected_rate():
    x = torch.randn(2048, generator=torch.Generator().manual_seed(3))
    step = None
    means = {}
    draws = []
    for seed in range(200):
        qt = quantize_pack(x, 2, 128, stochastic=True, seed=seed)
        step = per_element_scale(qt)
        draws.append(unpack_dequantize(qt) - x)
        if seed + 1 in (50, 200):
            means[seed + 1] = torch.stack(draws).mean(0) / step
    # The error of one draw is at most a step, so its sd is <= 1/2 step; the mean of n draws shrinks as 1/sqrt(n).
    overall = torch.stack(draws).div(step).mean().item()
    assert abs(overall) < 5 * 0.5 / math.sqrt(200 * x.numel())
    rms50, rms200 = (means[n].pow(2).mean().sqrt().item() for n in (50, 200))
    assert rms200 < 0.5 / math.sqrt(200) * 1.2
    assert 1.6 < rms50 / rms200 < 2.5  # sqrt(200/50) = 2
    nearest_bias = (unpack_dequantize(quantize_pack(x, 2, 128)) - x).div(step).pow(2).mean().sqrt().item()
    assert rms200 < nearest_bias / 3


def test_stochastic_rounding_leaves_global_rng_alone():
    x = torch.randn(500)
    before = torch.get_rng_state()
    quantize_pack(x, 4, stochastic=True)
    pow2_round(x)
    log_quantize(x)
    assert torch.equal(before, torch.get_rng_state())


def test_same_seed_same_codes_and_different_seed_differs():
    x = torch.randn(5000)
    a = quantize_pack(x, 2, stochastic=True, seed=7)
    b = quantize_pack(x, 2, stochastic=True, seed=7)
    c = quantize_pack(x, 2, stochastic=True, seed=8)
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, c.data)


# -- packing layout, bit by bit -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packing_layout_bit_by_bit(backend, bits):
    levels = 2**bits - 1
    n = 70  # two full groups of 32 and a padded third
    codes = [(3 * j + 1) % (levels + 1) for j in range(n)]
    codes[0], codes[1] = 0, levels  # every group spans the full range so scale = 1 exactly
    for g in range(0, n, 32):
        codes[g], codes[g + 1] = 0, levels
    x = torch.tensor(codes, dtype=torch.float32)
    qt = quantize_pack(x, bits, 32)
    assert qt.scale.tolist() == [1.0] * 3 and qt.zero.tolist() == [0.0] * 3
    per = 8 // bits
    padded = codes + [0] * (96 - n)
    expected = [0] * (96 // per)
    for j, q in enumerate(padded):
        expected[j // per] |= q << ((j % per) * bits)
    assert qt.data.tolist() == expected
    for j, q in enumerate(codes):
        assert (qt.data[j // per].item() >> ((j % per) * bits)) & levels == q


# -- exact byte counts ----------------------------------------------------------------------------------


def test_four_bit_one_million_holds_exactly_the_formula():
    n = 1 << 20
    qt = quantize_pack(torch.randn(n), 4, 128)
    assert qt.nbytes == n // 2 + 4 * (n // 128) == packed_nbytes(n, 4, 128)
    assert (n * 4) / qt.nbytes >= 7.5
    assert qt.data.dtype == torch.uint8 and qt.scale.dtype == torch.float16 and qt.scale.numel() == n // 128


@pytest.mark.parametrize("bits,group,n", [(1, 32, 33), (2, 64, 1000), (8, 4096, 5000), (4, 128, 0)])
def test_nbytes_matches_formula(bits, group, n):
    qt = quantize_pack(torch.randn(n), bits, group)
    groups = -(-n // group)
    assert qt.nbytes == groups * group * bits // 8 + 2 * groups * 2 == packed_nbytes(n, bits, group)


def test_bf16_scales_cover_ranges_fp16_cannot():
    x = torch.tensor([-1e6, 1e6] * 64)
    with pytest.raises(ValueError, match="bfloat16"):
        quantize_pack(x, 8)
    qt = quantize_pack(x, 8, scale_dtype=torch.bfloat16)
    assert (unpack_dequantize(qt) - x).abs().max() <= qt.scale.float().max() / 2


# -- Triton agrees with the torch reference bit for bit --------------------------------------------------

pytestmark_triton = pytest.mark.skipif(not dispatch.triton_installed(), reason="triton not installed")


def _bits_equal(a, b):
    if a.dtype.is_floating_point:
        view = {2: torch.int16, 4: torch.int32}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


def _run_both(use_backend, fn):
    use_backend("torch")
    ref = fn()
    use_backend("triton")
    return ref, fn()


@pytestmark_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_triton_quantize_pack_matches_reference(use_backend, dtype, bits, stochastic, scale_dtype):
    for name, x in odd_inputs(dtype).items():
        ref, tri = _run_both(use_backend, lambda: quantize_pack(x, bits, 32, stochastic, seed=123, scale_dtype=scale_dtype))
        for field in ("data", "scale", "zero"):
            assert _bits_equal(getattr(ref, field), getattr(tri, field)), (name, field)
        out_ref, out_tri = _run_both(use_backend, lambda: unpack_dequantize(ref))
        assert out_tri.shape == x.shape and out_tri.dtype == x.dtype
        if dtype == torch.bfloat16:
            # The interpreter truncates fp32->bf16 where the GPU rounds to nearest: allow 1 ulp.
            ulp = out_ref.float().abs().clamp_min(1e-30) * 2.0**-7
            assert ((out_ref.float() - out_tri.float()).abs() <= ulp).all(), name
        else:
            assert _bits_equal(out_ref, out_tri), name


@pytestmark_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_pow2_and_log_quantize_match_reference(use_backend, dtype):
    for name, x in odd_inputs(dtype).items():
        for fn in (
            lambda: pow2_round(x, seed=5),
            lambda: pow2_encode(x, seed=5).codes,
            lambda: log_quantize(x, 4, seed=5),
            lambda: log_quantize(x, 2, seed=9),
            lambda: pow2_encode_unit(x / (x.abs().amax() if x.numel() else 1), -6, seed=7),  # natural dithering
        ):
            ref, tri = _run_both(use_backend, fn)
            assert ref.shape == tri.shape == x.shape and _bits_equal(ref, tri), name


@pytestmark_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", [0.01, 0.3, 1.0])
def test_triton_topk_matches_reference(use_backend, dtype, ratio):
    inputs = odd_inputs(dtype)
    inputs["ties"] = torch.tensor([1.0, -2.0, 2.0, 0.5, 2.0, -2.0, 1.0] * 600).to(dtype)
    for name, x in inputs.items():
        (rv, ri), (tv, ti) = _run_both(use_backend, lambda: topk_select(x, ratio))
        assert torch.equal(ri, ti) and _bits_equal(rv, tv), name


@pytestmark_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_fake_quantize_matches_reference(use_backend, dtype):
    for name, x in odd_inputs(dtype).items():
        cases = [(torch.tensor(0.37), torch.tensor(0.0), -8, 7, None), (torch.tensor(0.05), torch.tensor(3.0), 0, 15, None)]
        if x.dim() == 2 and x.numel():
            cases.append((torch.rand(x.shape[0]) + 0.1, torch.zeros(x.shape[0]), -128, 127, 0))
            cases.append((torch.rand(x.shape[1]) + 0.1, torch.arange(x.shape[1]).float() % 4, 0, 255, 1))
        for scale, zero, qmin, qmax, dim in cases:
            ref, tri = _run_both(use_backend, lambda: fake_quantize(x, scale, zero, qmin, qmax, dim))
            assert ref.shape == tri.shape == x.shape and ref.dtype == tri.dtype == x.dtype
            if dtype == torch.bfloat16:  # interpreter truncation: 1 ulp
                ulp = ref.float().abs().clamp_min(1e-30) * 2.0**-7
                assert ((ref.float() - tri.float()).abs() <= ulp).all(), name
            else:
                assert _bits_equal(ref, tri), (name, dim)


def test_fake_quantize_rounds_half_to_even_and_clamps(backend):
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 100.0, -100.0, 0.24])
    out = fake_quantize(x, torch.tensor(1.0), torch.tensor(0.0), -8, 7)
    assert out.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 7.0, -8.0, 0.0]
    affine = fake_quantize(torch.tensor([0.0, 0.1, 1.0]), 0.1, 2.0, 0, 7)  # zero maps to code 2 exactly
    assert affine[0] == 0 and abs(float(affine[1]) - 0.1) < 1e-7 and abs(float(affine[2]) - 0.5) < 1e-6
    with pytest.raises(ValueError, match="one per channel"):
        fake_quantize(torch.randn(4, 3), torch.ones(2), 0.0, -8, 7, channel_dim=0)
    with pytest.raises(ValueError, match="qmin < qmax"):
        fake_quantize(torch.randn(4), 1.0, 0.0, 7, -8)


# -- pow2 and LUQ semantics -----------------------------------------------------------------------------


def test_pow2_round_picks_a_neighbouring_power_of_two(backend):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(2)) * 100
    x[:3] = torch.tensor([0.0, 1.0, -0.25])
    y = pow2_round(x, seed=1)
    lower = torch.exp2(torch.floor(torch.log2(x.abs())))
    assert ((y.abs() == lower) | (y.abs() == 2 * lower)).all()
    assert torch.equal(torch.sign(y), torch.sign(x))
    assert y[:3].tolist() == [0.0, 1.0, -0.25]


def test_pow2_round_is_unbiased():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(4)) * 10 + 0.1
    mean = torch.stack([pow2_round(x, seed=s) for s in range(400)]).mean(0)
    # Each draw's error is below x, so the sd of a 400-draw mean is below x / 20.
    assert ((mean - x) / x).mean().abs() < 0.01
    assert ((mean - x) / x).abs().max() < 0.25


def test_pow2_codes_decode_to_pow2_round_values():
    x = torch.randn(3000) * 1e-3
    payload = pow2_encode(x, seed=3)
    assert payload.codes.dtype == torch.uint8 and payload.nbytes == 3004
    assert torch.equal(pow2_decode(payload), pow2_round(x, seed=3))


def test_pow2_codes_underflow_far_below_the_max_is_unbiased():
    x = torch.cat([torch.tensor([2.0**60]), torch.full((20000,), 2.0**-80)])
    payload = pow2_encode(x, seed=0)
    lowest = 2.0 ** payload.lo_exp
    tail = pow2_decode(payload)[1:]
    assert set(tail.unique().tolist()) <= {0.0, lowest}
    assert tail.mean().item() == pytest.approx(2.0**-80, rel=0.3)


def test_log_quantize_levels_underflow_and_unbias():
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(4000, generator=gen) * torch.exp(torch.randn(4000, generator=gen) * 2)
    alpha = g.abs().max().item() / 2**7  # LUQ's underflow threshold for 4 bits
    q = log_quantize(g, 4, seed=0).abs()
    levels = torch.tensor([0.0] + [alpha * 2**k for k in range(8)])
    assert torch.allclose(q, levels[(q[:, None] - levels).abs().argmin(1)], rtol=1e-6, atol=0)
    below = g.abs() < alpha
    assert below.sum() > 100
    assert torch.allclose(q[below][q[below] > 0], torch.full_like(q[below][q[below] > 0], alpha))
    n = 300
    mean = torch.stack([log_quantize(g, 4, seed=s) for s in range(n)]).mean(0)
    # One draw's error has sd <= (|g| + alpha) / 2, so z below has sd <= 1 per element.
    z = (mean - g) / ((g.abs() + alpha) / (2 * math.sqrt(n)))
    assert abs(z.mean().item()) < 5 / math.sqrt(g.numel())
    assert z.pow(2).mean().sqrt().item() < 1.1


def test_topk_select_semantics():
    x = torch.tensor([0.1, -5.0, 3.0, 3.0, -3.0, 0.2])
    values, indices = topk_select(x, 0.5)
    assert indices.tolist() == [1, 2, 3] and values.tolist() == [-5.0, 3.0, 3.0]
    values, indices = topk_select(x, 1.0)
    assert torch.equal(values, x)
    big = torch.randn(10000)
    _, idx = topk_select(big, 0.01)
    assert set(idx.tolist()) == set(big.abs().topk(100).indices.tolist())


# -- bad arguments say what is allowed -------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors(monkeypatch):
    x = torch.randn(100)
    with pytest.raises(ValueError, match="bits=3 is not supported; use one of 1, 2, 4, 8"):
        quantize_pack(x, 3)
    with pytest.raises(ValueError, match="group_size=100 .* power of two from 32 to 4096"):
        quantize_pack(x, 4, group_size=100)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        quantize_pack(torch.arange(10), 4)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        pow2_round(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"ratio=0 .* \(0, 1\]"):
        topk_select(x, 0)
    with pytest.raises(ValueError, match="bits=1 is not supported for log_quantize"):
        log_quantize(x, 1)
    with pytest.raises(ValueError, match="inf/NaN"):
        quantize_pack(torch.tensor([1.0, float("nan")] * 20), 4, 32)
    with pytest.raises(ValueError, match="expects a QuantizedTensor"):
        unpack_dequantize(x)
    with pytest.raises(ValueError, match="inf or NaN"):
        pow2_encode(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="seed must be an int"):
        quantize_pack(x, 4, stochastic=True, seed="7")
    monkeypatch.setenv("EFFPLUG_KERNELS", "cuda")
    with pytest.raises(ValueError, match="use one of torch, triton"):
        quantize_pack(x, 4)


def test_forcing_triton_on_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setenv("EFFPLUG_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not dispatch.triton_installed():
        with pytest.raises(ImportError, match=r"effplug\[triton\]"):
            dispatch.kernel_backend(torch.ones(1))
    else:
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            dispatch.kernel_backend(torch.ones(1))


def test_default_dispatch_uses_torch_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("EFFPLUG_KERNELS", raising=False)
    assert dispatch.kernel_backend(torch.ones(1)) == "torch"


# -- values at the edges: fp32 max, NaN in top-k, out-of-range channel dims ----------------------------------


def test_pow2_round_keeps_values_near_fp32_max_finite(backend):
    top = torch.finfo(torch.float32).max
    x = torch.tensor([top, -top, 2.0**127, 1.5 * 2.0**127, 1.0] * 64)
    y = pow2_round(x, seed=3)
    assert torch.isfinite(y).all() and (y.abs()[::5] == 2.0**127).all()
    assert torch.isfinite(pow2_decode(pow2_encode(x, seed=3))).all()


def test_topk_select_counts_nan_as_the_largest_and_returns_k(backend):
    g = torch.randn(100, generator=torch.Generator().manual_seed(0))
    g[5] = float("nan")
    values, indices = topk_select(g, 0.1)
    assert values.numel() == indices.numel() == 10 and 5 in indices.tolist() and values.isnan().sum() == 1


def test_fake_quantize_rejects_a_channel_dim_out_of_range():
    with pytest.raises(ValueError, match="channel_dim=5 is out of range for a 2-D tensor"):
        fake_quantize(torch.randn(3, 4), torch.ones(4), torch.zeros(4), -8, 7, 5)
    out = fake_quantize(torch.randn(3, 4), torch.ones(4), torch.zeros(4), -8, 7, -1)  # negative dims still work
    assert out.shape == (3, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pow2_encode_many_equals_one_call_per_tensor(backend, dtype):
    from effplug.kernels.pow2 import pow2_encode_many

    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=gen).to(dtype) * scale for n, scale in ((7, 1.0), (1024, 1e-3), (33, 50.0),
                                                                                  (4, 0.0), (257, 1e-30))]
    seeds = [3, 2**62 + 5, 0, 11, 7]
    for many, one in zip(pow2_encode_many(tensors, seeds), [pow2_encode(t, seed=s) for t, s in zip(tensors, seeds, strict=True)],
                         strict=True):
        assert torch.equal(many.codes, one.codes) and many.lo_exp == one.lo_exp and many.dtype == one.dtype


@pytestmark_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("stochastic", [False, True])
def test_triton_quantize_affine_matches_reference(use_backend, dtype, bits, stochastic):
    from effplug.kernels.affine import dequantize_affine, quantize_affine

    for name, x in odd_inputs(dtype).items():
        if x.dim() < 2 or not x.numel():
            continue
        for axis in (0, x.dim() - 1):
            channels = x.shape[axis]
            low = x.float().amin(dim=[d for d in range(x.dim()) if d != axis]) - 0.01
            step = (x.float().amax(dim=[d for d in range(x.dim()) if d != axis]) - low) / (2**bits - 1) + 1e-3
            ref, tri = _run_both(use_backend, lambda: quantize_affine(x, low, step, axis, bits, stochastic, seed=77))
            assert torch.equal(ref.data, tri.data), (name, axis)
            assert ref.low.numel() == channels and ref.nbytes == tri.nbytes
            out = dequantize_affine(ref)
            assert out.shape == x.shape and out.dtype == x.dtype
            # stochastic: within one step of the input; nearest: within half a step (plus rounding to dtype)
            shape = [1] * x.dim()
            shape[axis] = -1
            bound = step.view(shape) * (1.0 if stochastic else 0.5) * 1.01 + x.float().abs() * 2.0**-7
            assert ((out.float() - x.float()).abs() <= bound).all(), (name, axis)


def test_quantize_affine_names_what_is_wrong():
    from effplug.kernels.affine import quantize_affine

    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="one value per channel along axis 1 \\(6\\)"):
        quantize_affine(x, torch.zeros(4), torch.ones(4), 1, 4)
    with pytest.raises(ValueError, match="use one of 1, 2, 4, 8"):
        quantize_affine(x, torch.zeros(6), torch.ones(6), 1, 3)


@pytest.mark.parametrize("stochastic", [False, True])
def test_the_torch_reference_in_parts_equals_one_pass(monkeypatch, stochastic):
    from effplug.kernels import pack
    from effplug.kernels.philox import random_words

    x = torch.randn(5 * 1024 + 77, generator=torch.Generator().manual_seed(0))
    whole = quantize_pack(x, 4, 128, stochastic, seed=9)
    monkeypatch.setattr(pack, "CHUNK_ELEMENTS", 512)  # 11 parts, the last one short
    monkeypatch.setattr(pack, "DECODE_CHUNK_ELEMENTS", 1024)
    parts = quantize_pack(x, 4, 128, stochastic, seed=9)
    for field in ("data", "scale", "zero"):
        assert _bits_equal(getattr(whole, field), getattr(parts, field)), field
    assert torch.equal(unpack_dequantize(parts), unpack_dequantize(whole))
    assert torch.equal(random_words(3, 40, start=24), random_words(3, 64)[24:])
    with pytest.raises(ValueError, match="multiple of 4"):
        random_words(3, 8, start=2)


def test_pow2_and_log_quantize_in_parts_equal_one_pass(monkeypatch):
    from effplug.kernels import pow2

    x = torch.randn(3 * 1024 + 5, generator=torch.Generator().manual_seed(1)) * 4
    whole = [pow2_round(x, seed=3), pow2_encode(x, seed=3).codes, log_quantize(x, 4, seed=4)]
    monkeypatch.setattr(pow2, "CHUNK_ELEMENTS", 256)  # 13 parts, the last one short
    parts = [pow2_round(x, seed=3), pow2_encode(x, seed=3).codes, log_quantize(x, 4, seed=4)]
    assert all(_bits_equal(a, b) for a, b in zip(whole, parts, strict=True))


def test_the_compiled_philox_draws_the_eager_words_bit_for_bit(monkeypatch):
    """EFFPLUG_COMPILED_PHILOX=1 compiles the rounds at the first draw (auto waits for many draws); the words,
    one stream or many, at any start and length, are those of the eager rounds (and so of tl.randint4x)."""
    from effplug.kernels import philox

    cases = [(7, 10, 0), (2**62 + 5, 100_003, 4096), (99, 65_536 * 4 + 12, 8)]
    monkeypatch.setenv("EFFPLUG_COMPILED_PHILOX", "0")
    eager = [philox.random_words(s, n, start=st) for s, n, st in cases]
    eager_streams = philox.random_words_streams([5, 2**61, 9], [1001, 70_000, 4])
    monkeypatch.setenv("EFFPLUG_COMPILED_PHILOX", "1")
    monkeypatch.setattr(philox, "_compiled", None)
    compiled = [philox.random_words(s, n, start=st) for s, n, st in cases]
    assert callable(philox._compiled)  # this machine has a C++ compiler: it must have built
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled, strict=True))
    assert torch.equal(eager_streams, philox.random_words_streams([5, 2**61, 9], [1001, 70_000, 4]))
    monkeypatch.setenv("EFFPLUG_COMPILED_PHILOX", "yes")
    with pytest.raises(ValueError, match="auto, 1 or 0"):
        philox.random_words(1, 8)
