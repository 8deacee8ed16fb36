"""AC-SGD between pipeline stages (Wang et al. 2022): the codec's caches and bytes, its gradients, sample ids,
convergence, and the boundary ends' seed streams. The multi-process checks run with the pipeline engine's."""

import math

import pytest
import torch

from effplug.parallel.pipeline.acsgd import ACSGDCodec


def test_acsgd_caches_stay_identical_and_bytes_follow_the_formula():
    sender, receiver = ACSGDCodec(bits=4, group_size=64, seed=1), ACSGDCodec(bits=4, group_size=64)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(16, 96, generator=gen)
    ids = torch.arange(16)
    errors = []
    for step in range(6):
        activation = base + 0.01 * step * torch.randn(16, 96, generator=gen)
        payload = sender.encode(activation, ids)
        rebuilt = receiver.decode(payload, like=activation)
        assert all(torch.equal(sender.cache[i], receiver.cache[i]) for i in range(16))
        first = step == 0
        assert payload.nbytes == sender.activation_nbytes(16, 96, first_sight=first)
        if first:
            assert torch.equal(rebuilt, activation)
        else:
            assert payload.nbytes < activation.numel() * 4 / 6  # 4-bit changes + scales + ids
        errors.append((rebuilt - activation).abs().max().item())
    # the change between steps is small, so its 4-bit quantization error is far below the activation's range
    assert max(errors[1:]) < 0.2 * base.abs().max().item()


def test_acsgd_gradients_and_bad_settings():
    codec = ACSGDCodec()
    g = torch.randn(8, 128)
    q = codec.encode_gradient(g)
    assert q.bits == 8 and (ACSGDCodec.decode_gradient(q) - g).abs().max() < (g.max() - g.min()) / 255 * 1.01
    with pytest.raises(ValueError, match="2 or 4 bits"):
        ACSGDCodec(bits=3)
    with pytest.raises(ValueError, match="one sample id per row"):
        codec.encode(torch.randn(4, 8), torch.arange(3))
    codec.encode(torch.randn(4, 128), torch.arange(4))
    restored = ACSGDCodec()
    restored.load_state_dict(codec.state_dict())  # a resumed sender keeps its cache and its seed position
    assert sorted(restored.cache) == [0, 1, 2, 3]
    assert all(torch.equal(restored.cache[i], codec.cache[i]) for i in range(4))
    later = torch.randn(4, 128)
    assert torch.equal(restored.encode(later, torch.arange(4)).delta.data, codec.encode(later, torch.arange(4)).delta.data)


def test_acsgd_sample_ids_are_stable_and_distinct():
    import subprocess
    import sys

    from effplug.parallel.pipeline.acsgd import batch_sample_ids, row_sample_ids

    rows = torch.arange(24).reshape(6, 4)
    ids = row_sample_ids(rows)
    assert ids.dtype == torch.int64 and len(set(ids.tolist())) == 6
    assert torch.equal(row_sample_ids(rows[[3, 1]]), ids[[3, 1]])  # a row's id does not depend on its batch
    # the same in another process (Python's own hash() is salted per process; blake2b is not)
    code = "import torch; from effplug.parallel.pipeline.acsgd import row_sample_ids; " \
           "print(row_sample_ids(torch.arange(24).reshape(6, 4)).tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(ids.tolist())
    given = torch.tensor([7, 8, 9, 10, 11, 12])
    assert torch.equal(batch_sample_ids((rows, rows, given)), given)  # the dataset's own ids win
    assert torch.equal(batch_sample_ids((rows.float(), rows)), row_sample_ids(rows.float()))
    assert torch.equal(batch_sample_ids((rows, rows, torch.rand(6))), ids)  # float third element: not ids


def test_acsgd_training_converges_on_stdlib_text():
    """Two stages in one process; the boundary carries AC-SGD payloads both ways, on a fixed sample set."""
    from effplug import data

    corpus = data.stdlib_text(max_chars=200_000)
    x, y = corpus.windows("train", 16, 256, seed=0)

    def run(compress: bool) -> float:
        torch.manual_seed(0)
        stage0 = torch.nn.Sequential(torch.nn.Embedding(corpus.vocab_size, 32), torch.nn.Flatten(),
                                     torch.nn.Linear(16 * 32, 128), torch.nn.GELU())
        stage1 = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.Linear(128, corpus.vocab_size))
        opt = torch.optim.Adam([*stage0.parameters(), *stage1.parameters()], lr=3e-3)
        sender, receiver = ACSGDCodec(bits=2, seed=0), ACSGDCodec(bits=2)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(240):
            ids = torch.randint(0, 256, (32,), generator=gen)
            hidden = stage0(x[ids])
            if compress:
                received = receiver.decode(sender.encode(hidden, ids), like=hidden).requires_grad_(True)
            else:
                received = hidden.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(stage1(received), y[ids, -1])
            opt.zero_grad()
            loss.backward()
            grad = received.grad
            if compress:
                grad = ACSGDCodec.decode_gradient(sender.encode_gradient(grad))
            hidden.backward(grad)
            opt.step()
            losses.append(loss.item())
        return sum(losses[-40:]) / 40

    exact, compressed = run(False), run(True)
    print(f"exact {exact:.3f}, AC-SGD 2-bit {compressed:.3f}, chance {math.log(corpus.vocab_size):.3f}")
    assert compressed < 0.75 * math.log(corpus.vocab_size)  # it learned, far from chance
    assert compressed == pytest.approx(exact, rel=0.1)


def test_acsgd_boundary_ends_draw_from_disjoint_streams():
    # before: stage s's sender drew seed+2s+1, seed+2s+2, ... and stage s+1's receiver started at seed+2s+2,
    # replaying its neighbour's stream one draw later
    pytest.importorskip("torch.distributed.pipelining")
    from torch import nn

    from effplug.parallel.pipeline.acsgd import ACSGDConfig
    from effplug.parallel.pipeline.acsgd_stage import ACSGDStageModule

    config = ACSGDConfig(seed=0)
    stages = [ACSGDStageModule(nn.Identity(), i == 0, i == 3, config, i) for i in range(4)]
    ends = [b.codec.seeds for s in stages for b in s.boundaries()]
    assert len(ends) == 6
    drawn = [{end.draw() for _ in range(200)} for end in ends]
    assert sum(len(d) for d in drawn) == len(set().union(*drawn)) == 1200
