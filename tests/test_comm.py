"""Gradient compressors: engine invariants in one process, then real DDP on 2 gloo processes."""

import math

import pytest
import torch

from effplug.comm import (
    CGXCompressor,
    NaturalCompressor,
    NaturalDitheringCompressor,
    PowerSGDCompressor,
    Segment,
    TopKCompressor,
    make_compressor,
)


def test_error_feedback_residual_plus_sent_equals_input():
    comp = TopKCompressor(ratio=0.05)
    segments = [Segment("w", 0, 700, True), Segment("b", 700, 37, True)]
    old = torch.zeros(737)
    for step in range(4):
        g = torch.randn(737, generator=torch.Generator().manual_seed(step))
        values, indices = comp.select(g, segments)
        sent = torch.zeros(737)
        sent[indices.long()] = values
        new = torch.cat([comp.residuals["w"], comp.residuals["b"]])
        assert torch.equal(sent + new, g + old)  # exact: the residual is what was not sent
        assert indices.numel() == math.ceil(0.05 * 737) and indices.dtype == torch.int32
        old = new.clone()


def test_topk_without_error_feedback_keeps_no_state():
    comp = TopKCompressor(ratio=0.1, error_feedback=False)
    comp.average(torch.randn(100))
    assert comp.residuals == {} and comp.state_dict() == {"residuals": {}}


@pytest.mark.parametrize("make", [lambda s: NaturalCompressor(seed=s),
                                  lambda s: CGXCompressor(bits=2, bucket_size=64, seed=s, min_compress_size=0)])
def test_stochastic_compressors_are_unbiased_over_seeds(make):
    x = torch.randn(256, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 256)
    runs = torch.stack([make(seed).average(x) for seed in range(1500)])
    err = (runs.mean(0) - x).abs()
    spread = runs.std(0) / math.sqrt(len(runs))
    assert (err <= 5 * spread + 1e-7).all()  # within 5 standard errors, every element (fixed seeds)
    assert (runs.std(0) > 0).any()  # it really is random


def test_natural_values_are_powers_of_two_and_cgx_uses_its_levels():
    x = torch.randn(2048, generator=torch.Generator().manual_seed(1))
    y = NaturalCompressor(seed=3).average(x)
    nz = y[y != 0].abs()
    assert torch.equal(torch.exp2(torch.log2(nz).round()), nz)
    q = CGXCompressor(bits=2, bucket_size=1024, seed=3, min_compress_size=0).average(x)
    for bucket in q.view(2, 1024):  # a single process quantizes once per stage: at most 4 levels per bucket
        assert bucket.unique().numel() <= 4


def _dither_rounding_moments(x, levels, bucket_size):
    """Per element: the two levels around ``|x| / max|x|`` of its bucket, and the variance of the rounding."""
    scale = x.view(-1, bucket_size).abs().amax(1).repeat_interleave(bucket_size)
    y = x.abs() / scale
    lowest = 2.0 ** (1 - levels)
    below = torch.where(y < lowest, torch.zeros_like(y), torch.exp2(torch.floor(torch.log2(y.clamp_min(lowest)))))
    above = torch.where(y < lowest, torch.full_like(y, lowest), 2 * below).clamp_max(1.0)
    above = torch.where(y == below, below, above)
    return below, above, scale**2 * (above - y) * (y - below), y


@pytest.mark.parametrize("levels,bucket_size", [(7, 512), (1, 64), (3, 128)])
def test_natural_dithering_is_unbiased_and_within_its_variance_bound(levels, bucket_size):
    from effplug.codecs import DitherCodec

    x = torch.randn(2048, generator=torch.Generator().manual_seed(0)) * torch.logspace(-4, 1, 2048)
    runs = torch.stack([DitherCodec(levels, bucket_size, seed=s).decode(DitherCodec(levels, bucket_size, seed=s)
                                                                         .encode(x, "w")) for s in range(600)])
    below, above, variance, y = _dither_rounding_moments(x, levels, bucket_size)
    # every value lands on one of its two levels (times the bucket's scale)
    scale = (x.abs() / y)
    assert ((runs.abs() - below * scale).abs() <= 1e-6 * scale).logical_or(
        (runs.abs() - above * scale).abs() <= 1e-6 * scale).all()
    # unbiased: per element, within 5 standard errors of the known rounding variance (where the draw is not rare)
    p_up = torch.where(above > below, (y - below) / (above - below), torch.zeros_like(y))
    frequent = 600 * p_up * (1 - p_up) >= 5
    err = (runs.mean(0).double() - x.double()).abs()
    assert (err[frequent] <= 5 * (variance[frequent].double() / 600).sqrt() + 1e-7).all()
    assert frequent.sum() > 200
    # and in aggregate over all 2,048 values (a z-score of the summed error)
    assert (runs.mean(0).double() - x.double()).sum().abs() <= 5 * (variance.double().sum() / 600).sqrt()
    # the empirical MSE matches the analytic one and stays below the bound of docs/natural-dithering.md
    mse = (runs - x).pow(2).sum(1).mean()
    assert mse == pytest.approx(variance.sum().item(), rel=0.1)
    b = x.view(-1, bucket_size)
    bound = b.pow(2).sum() / 8 + 2.0 ** (1 - levels) * (b.abs().amax(1) * b.abs().sum(1)).sum()
    assert mse <= bound


def test_natural_dithering_sends_half_the_bytes_of_natural_compression_and_slices_decode_alone():
    from effplug.codecs import DitherCodec

    codec = DitherCodec(levels=7, bucket_size=512, seed=1)
    x = torch.randn(4096, generator=torch.Generator().manual_seed(2))
    payload = codec.encode(x, "w")
    assert payload.nbytes == codec.nbytes_for(4096) == 4096 // 2 + 4 * 8  # 4-bit codes and 8 fp32 scales
    assert codec.bits == 4 and DitherCodec(levels=1).bits == 2 and DitherCodec(levels=127).bits == 8
    whole = codec.decode(payload)
    parts = codec.to_bytes(payload, 4)
    assert [p.numel() for p in parts] == [codec.nbytes_for(1024)] * 4
    assert torch.equal(torch.cat([codec.decode(codec.from_bytes(p, 1024, x.dtype)) for p in parts]), whole)
    assert whole.abs().max() == x.abs().max()  # each bucket's peak is its scale, sent exactly
    with pytest.raises(ValueError, match="levels=0: use an int from 1 to 127"):
        DitherCodec(levels=0)
    with pytest.raises(ValueError, match="power of two >= 8"):
        NaturalDitheringCompressor(bucket_size=100)
    with pytest.raises(ValueError, match="pad first"):
        codec.encode(torch.randn(100))
    with pytest.raises(ValueError, match="inf or NaN"):
        codec.encode(torch.full((512,), float("nan")))
    assert torch.equal(codec.decode(codec.encode(torch.zeros(512))), torch.zeros(512))


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TopKCompressor(ratio=0)
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        CGXCompressor(bits=3)
    with pytest.raises(ValueError, match="choose one of"):
        make_compressor("randomk")
    with pytest.raises(ValueError, match=r"the 'topk' compressor got unknown option\(s\) 'bits'; valid options: "
                                         r"compress_1d, error_feedback"):
        make_compressor("topk", bits=4)
    with pytest.raises(ValueError, match=r"'ratoi' \(did you mean 'ratio'\?\)"):
        make_compressor("topk", ratoi=0.1)
    with pytest.raises(ValueError, match=">= 1"):
        PowerSGDCompressor(rank=0)
    with pytest.raises(ValueError, match="start_iter"):
        PowerSGDCompressor(start_iter=1)
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        from effplug.comm import register

        register(torch.nn.Linear(2, 2), "topk")


def test_merge_rank_states_keeps_the_pending_correction():
    states = [{"residuals": {"w": torch.full((3,), float(r))}} for r in range(4)]
    merged = TopKCompressor().merge_rank_states(states, new_world_size=2, new_rank=1)
    # old ranks would add sum_r e_r / 4 = 1.5 to the averaged update; two new ranks with 1.5 each add the same
    assert torch.equal(merged["residuals"]["w"], torch.full((3,), 1.5))


def test_a_compressor_that_compresses_nothing_says_so_with_the_knob(caplog):
    small = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))  # every tensor < 1,024 elements
    comp = CGXCompressor(bits=4).bind(small)
    grads = [torch.randn_like(p) for p in small.parameters()]
    with caplog.at_level("WARNING", logger="effplug.comm"):
        for _ in range(2):
            comp.average(torch.cat([g.flatten() for g in grads]), comp.segments(list(small.parameters())))
    warnings = [r for r in caplog.records if "sends the same bytes as dense" in r.message]
    assert len(warnings) == 1 and "min_compress_size=1024" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="effplug.comm"):
        CGXCompressor(bits=4, min_compress_size=64).bind(small).average(
            torch.cat([g.flatten() for g in grads]), CGXCompressor(min_compress_size=64).bind(small).segments(
                list(small.parameters())))
    assert not any("sends the same bytes as dense" in r.message for r in caplog.records)


def test_nonfinite_gradients_are_averaged_exactly(caplog):
    comp = TopKCompressor(ratio=0.01)
    g = torch.randn(500)
    g[7] = float("inf")
    with caplog.at_level("WARNING"):
        out = comp.average(g)
    assert torch.equal(out, g) and comp.residuals == {}
    assert "inf/NaN" in caplog.text


# -- real DDP on two gloo processes --------------------------------------------------------------------------

def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _grads_after_backward(model, rank, step=0, nan_on_rank=None):
    gen = torch.Generator().manual_seed(100 * rank + step)
    x, y = torch.randn(16, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    if rank == nan_on_rank:
        x[3, 5] = float("nan")
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def _ddp(compressor=None):
    from torch.nn.parallel import DistributedDataParallel

    from effplug.comm import register

    model = DistributedDataParallel(_mlp())
    return model, register(model, compressor) if compressor is not None else None


def _train(model, rank, steps, first=0):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(first, first + steps):
        _grads_after_backward(model, rank, step)
        opt.step()


def _to_buffer(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _comm_worker(rank, world):
    import torch.distributed as dist

    out = {}
    dense_model, _ = _ddp()
    dense = _grads_after_backward(dense_model, rank)
    # lossless settings reproduce DDP's own all-reduce bit for bit
    for name, comp in {"topk_ratio_1": TopKCompressor(ratio=1.0),
                       "cgx_uncompressed": CGXCompressor(min_compress_size=10**9)}.items():
        model, comp = _ddp(comp)
        grads = _grads_after_backward(model, rank)
        out[name] = all(torch.equal(a, b) for a, b in zip(grads, dense, strict=True))
    # bytes per rank per step, and that every rank ends with the same gradients
    for name, comp in {"topk": TopKCompressor(ratio=0.01), "natural": NaturalCompressor(seed=5),
                       "cgx": CGXCompressor(bits=4, seed=5), "dither": NaturalDitheringCompressor(seed=5)}.items():
        model, comp = _ddp(comp)
        flat = torch.cat([g.flatten() for g in _grads_after_backward(model, rank)])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        out[name] = {"meter": comp.meter.as_dict(), "same_on_ranks": torch.equal(gathered[0], gathered[1]),
                     "uncompressed": dict(comp.uncompressed),
                     "err": (flat - torch.cat([g.flatten() for g in dense])).abs().max().item()}
    # a NaN on rank 1 only: no hang, no collective mismatch, and every rank gets what dense DDP gives
    dense_nan = torch.cat([g.flatten() for g in _grads_after_backward(_ddp()[0], rank, nan_on_rank=1)])
    for name, comp in {"topk": TopKCompressor(ratio=0.01), "natural": NaturalCompressor(seed=5),
                       "cgx": CGXCompressor(bits=4, seed=5), "dither": NaturalDitheringCompressor(seed=5)}.items():
        model, comp = _ddp(comp)
        got = torch.cat([g.flatten() for g in _grads_after_backward(model, rank, nan_on_rank=1)])
        same_nans = torch.equal(got.isnan(), dense_nan.isnan()) and bool(got.isnan().any())
        out[f"nan_{name}"] = same_nans and torch.equal(got.nan_to_num(7.0), dense_nan.nan_to_num(7.0))
    # natural compression across ranks is unbiased: mean over seeds approaches the dense average
    dense_flat = torch.cat([g.flatten() for g in dense])
    total = torch.zeros_like(dense_flat)
    local = torch.cat([g.flatten() for g in _grads_after_backward(_mlp(), rank)])
    for seed in range(300):
        total += NaturalCompressor(seed=seed).average(local)
    out["natural_mean_err"] = ((total / 300) - dense_flat).abs().max().item()
    out["dense_scale"] = dense_flat.abs().max().item()
    local_scale = local.abs().max()
    dist.all_reduce(local_scale, op=dist.ReduceOp.MAX)
    out["cgx_local_scale"] = local_scale.item()
    # resume: residuals and seed streams restored into a fresh DDP (new buckets) continue exactly like the
    # original run (keyed per parameter, so DDP's different first-step buckets after a resume do not matter)
    for name, make in {"topk": lambda: TopKCompressor(ratio=0.02), "cgx": lambda: CGXCompressor(bits=4, seed=0),
                       "natural": lambda: NaturalCompressor(seed=0),
                       "dither": lambda: NaturalDitheringCompressor(seed=0)}.items():
        model, comp = _ddp(make())
        _train(model, rank, 3)
        saved_params = [p.detach().clone() for p in model.parameters()]
        saved_state = torch.load(_to_buffer(comp.state_dict()), weights_only=True)
        _train(model, rank, 2, first=3)
        continued = [p.detach().clone() for p in model.parameters()]
        for restore in (True, False):
            fresh, fresh_comp = _ddp(make())
            with torch.no_grad():
                for p, s in zip(fresh.parameters(), saved_params, strict=True):
                    p.copy_(s)
            if restore:
                fresh_comp.load_state_dict(saved_state)
            _train(fresh, rank, 2, first=3)
            same = all(torch.equal(a, b) for a, b in zip(fresh.parameters(), continued, strict=True))
            out[f"resume_{restore}" if name == "topk" else f"resume_{name}_{restore}"] = same
    # overlap: each bucket is averaged on the compressor's worker thread (the hook returns at once), with the
    # same result as averaging in the hook, and every rank issues the same collectives in the same order
    import threading

    for name, make in {"topk": lambda: TopKCompressor(ratio=0.02), "cgx": lambda: CGXCompressor(bits=4, seed=0),
                       "natural": lambda: NaturalCompressor(seed=0),
                       "dither": lambda: NaturalDitheringCompressor(seed=0)}.items():
        runs = []
        for overlap in (True, False):
            comp = make()
            comp.overlaps_backward = overlap
            comp.meter.trace = []
            threads = set()
            average = comp.average
            comp.average = lambda *a, average=average, threads=threads, **k: (
                threads.add(threading.current_thread().name), average(*a, **k))[1]
            model, comp = _ddp(comp)
            _train(model, rank, 3)
            runs.append(([p.detach().clone() for p in model.parameters()], threads, comp.meter.trace))
        (params, threads, trace), (sync_params, sync_threads, _) = runs
        codes = torch.tensor([[{"all_reduce": 0, "all_gather": 1, "all_to_all": 2}[op], n] for op, n in trace])
        gathered = [torch.empty_like(codes) for _ in range(world)]
        dist.all_gather(gathered, codes)
        out[f"overlap_{name}"] = {
            "same_as_in_hook": all(torch.equal(a, b) for a, b in zip(params, sync_params, strict=True)),
            "on_worker": threads == {f"effplug-{comp.name}"}, "in_hook": sync_threads == {"MainThread"},
            "same_order_on_ranks": all(torch.equal(g, gathered[0]) for g in gathered), "collectives": len(trace)}
    # PowerSGD: state round trip through plain tensors after compression started
    model, comp = _ddp(PowerSGDCompressor(rank=1, start_iter=2))
    _train(model, rank, 4)
    state = comp.state_dict()
    out["powersgd"] = {"iter": state["iter"], "plain": all(isinstance(v, torch.Tensor) for v in state["error"].values()),
                       "meter": comp.meter.as_dict()}
    fresh, fresh_comp = _ddp(PowerSGDCompressor(rank=1, start_iter=2))
    fresh_comp.load_state_dict(state)
    _train(fresh, rank, 2)
    out["powersgd_resumed_iter"] = fresh_comp.state.iter
    return out


@pytest.fixture(scope="module")
def ddp_results():

    from effplug.launch import spawn_ranks

    return spawn_ranks(_comm_worker, 2)


@pytest.mark.parametrize("name", ["topk", "cgx", "natural", "dither"])
def test_buckets_average_off_the_training_thread_in_one_order_on_every_rank(ddp_results, name):
    for rank_out in ddp_results.values():
        got = rank_out[f"overlap_{name}"]
        assert got["same_as_in_hook"] and got["on_worker"] and got["in_hook"], got
        assert got["same_order_on_ranks"] and got["collectives"] >= 3, got


def test_lossless_settings_reproduce_dense_allreduce(ddp_results):
    for rank in range(2):
        assert ddp_results[rank]["topk_ratio_1"]
        assert ddp_results[rank]["cgx_uncompressed"]


def _expected_bytes(world):
    """Analytic bytes one rank sends per step for ``_mlp`` (2048 + 32 + 320 + 10 fp32 values, one bucket)."""
    numel = 2048 + 32 + 320 + 10
    ring = lambda n: 2 * (world - 1) * n / world  # noqa: E731
    k = math.ceil(0.01 * numel)
    flag = ring(4)  # the one-element non-finite flag every rank agrees on before choosing a path
    topk = (world - 1) * (4 * k + 4 * k) + flag  # all-gather of fp32 values and int32 indices
    # each parameter is encoded on its own (so resume is exact): codes + its base exponent per slice, both ways
    slices = sum(-(-n // world) + 4 for n in (2048, 32, 320, 10))
    natural = 2 * (world - 1) / world * world * slices + flag
    cgx_exact = ring(4 * (32 + 320 + 10))  # the two biases and the 320-element layer are below 1024
    cgx_chunk = 2048 // world * 4 // 8 + 4 * (2048 // world // 1024)  # 4-bit codes + bf16 scale and zero
    cgx = cgx_exact + flag + 2 * (world - 1) / world * world * cgx_chunk
    dither_chunk = 2048 // world * 4 // 8 + 4 * (2048 // world // 512)  # 4-bit codes + an fp32 scale per 512
    dither = cgx_exact + flag + 2 * (world - 1) / world * world * dither_chunk
    return {"dense": ring(4 * numel), "topk": topk, "natural": natural, "cgx": cgx, "dither": dither}


def test_a_nan_on_one_rank_gives_every_rank_the_dense_ddp_result(ddp_results):
    for rank in range(2):
        for name in ("topk", "natural", "cgx", "dither"):
            assert ddp_results[rank][f"nan_{name}"], (rank, name)


def test_bytes_meter_matches_the_analytic_count(ddp_results):
    expected = _expected_bytes(2)
    for name in ("topk", "natural", "cgx", "dither"):
        meter = ddp_results[0][name]["meter"]
        assert meter["steps"] == 1
        assert meter["bytes_per_step"] == pytest.approx(expected[name], abs=1e-9), name
        assert meter["dense_bytes_per_step"] == pytest.approx(expected["dense"], abs=1e-9)
    assert ddp_results[0]["topk"]["meter"]["ratio"] > 45
    assert ddp_results[0]["cgx"]["uncompressed"] == {"0.bias": 32, "2.weight": 320, "2.bias": 10}


def test_ranks_agree_and_compression_error_is_bounded(ddp_results):
    for name in ("topk", "natural", "cgx", "dither"):
        assert ddp_results[0][name]["same_on_ranks"], name
    # two stochastic roundings, each at most one 4-bit step of a bucket whose range is <= 2 * max|g|
    assert ddp_results[0]["cgx"]["err"] <= 2 * 2 * ddp_results[0]["cgx_local_scale"] / 15
    # 300 seeds: the seed-mean is far closer to the dense average than one draw can be
    assert ddp_results[0]["natural_mean_err"] < 0.06 * ddp_results[0]["dense_scale"]


def test_resume_restores_residuals(ddp_results):
    for rank in range(2):
        assert ddp_results[rank]["resume_True"]
        assert not ddp_results[rank]["resume_False"]  # without the residuals the run really diverges


def test_cgx_and_natural_resume_exactly_with_their_seed_streams(ddp_results):
    for rank in range(2):
        for name in ("cgx", "natural", "dither"):
            assert ddp_results[rank][f"resume_{name}_True"], (rank, name)
            assert not ddp_results[rank][f"resume_{name}_False"], (rank, name)  # restarted streams diverge


def test_powersgd_state_is_plain_and_restores(ddp_results):
    psgd = ddp_results[0]["powersgd"]
    assert psgd["iter"] >= 3 and psgd["plain"]
    assert psgd["meter"]["ratio"] > 1.2  # after start_iter, P and Q replace the dense matrices
    assert ddp_results[0]["powersgd_resumed_iter"] == psgd["iter"] + 1  # one dense step, then the restored state


def test_strategy_splits_options_and_rejects_misplaced_ones():
    pytest.importorskip("pytorch_lightning")
    from effplug.strategies import CompressedDDPStrategy

    strategy = CompressedDDPStrategy("cgx", bits=8, find_unused_parameters=True)
    assert strategy.compressor.bits == 8 and strategy._ddp_kwargs == {"find_unused_parameters": True}
    with pytest.raises(ValueError, match="bits .an option of cgx. is not an option of the 'topk'"):
        CompressedDDPStrategy("topk", bits=4)
    with pytest.raises(ValueError, match="choose one of"):
        CompressedDDPStrategy("randomk")


def test_strategy_options_are_checked_at_construction_with_a_suggestion():
    pytest.importorskip("pytorch_lightning")
    from effplug.strategies import CompressedDDPStrategy

    with pytest.raises(TypeError, match=r"'ratoi' \(did you mean 'ratio'\?\)"):
        CompressedDDPStrategy("topk", ratoi=0.01)  # used to build, then fail on every rank after launch
    assert CompressedDDPStrategy("topk", ratio=0.01, static_graph=False).compressor.ratio == 0.01


def test_unclear_errors_now_say_what_to_do():
    with pytest.raises(ValueError, match="bucket_size=1000 is not supported; use a power of two"):
        CGXCompressor(bucket_size=1000)
    with pytest.raises(ValueError, match="seed='x': use an int"):
        CGXCompressor(seed="x")
    with pytest.raises(ValueError, match="seed='x'"):
        NaturalCompressor(seed="x")
    transformers = pytest.importorskip("transformers")
    from effplug.hf import compress_gradients

    with pytest.raises(TypeError, match="needs the built transformers.Trainer"):
        compress_gradients(None)
    assert transformers is not None


@pytest.mark.parametrize("name", ["natural", "cgx", "dither"])
def test_seed_streams_restart_on_another_world_size_and_keep_their_state_plain(name):
    compressor = make_compressor(name, seed=3)
    compressor.codec.seeds.set_scope("rank1")
    compressor.codec.seeds.draw("layer.weight")
    state = compressor.state_dict()
    assert state["seeds"]["scope"] == "rank1" and set(state["seeds"]["streams"]["layer.weight"]) == {"seed", "position"}
    fresh = make_compressor(name, seed=3)
    fresh.load_state_dict(state)  # same world: the stream continues
    assert fresh.codec.seeds.draw("layer.weight") == compressor.codec.seeds.draw("layer.weight")
    other = make_compressor(name, seed=3)
    other.load_state_dict(other.merge_rank_states([state, state, state], new_world_size=2, new_rank=0))
    other.codec.seeds.set_scope("rank0")  # what the first compressed step does; must not raise
    assert other.codec.seeds.streams == {}
