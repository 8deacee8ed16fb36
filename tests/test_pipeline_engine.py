"""Pipeline engine parts without processes: schedule action lists and their simulator, and the runners across
processes (GPipe/1F1B with AC-SGD steps, Chimera, tied weights). The AC-SGD codec is in test_acsgd.py."""


import pytest
import torch

from effplug.parallel.pipeline.acsgd import ACSGDCodec
from effplug.parallel.schedules import (
    analytic_bubble,
    chimera,
    gpipe,
    merge_conflicts,
    one_f_one_b,
    simulate,
    worker_of,
)


@pytest.mark.parametrize("depth, micro", [(2, 4), (4, 4), (4, 8), (3, 7)])
@pytest.mark.parametrize("backward_time", [1.0, 2.0])
def test_gpipe_and_1f1b_bubbles_equal_the_closed_form(depth, micro, backward_time):
    for build in (gpipe, one_f_one_b):
        timeline = simulate(build(depth, micro), 1.0, backward_time)
        assert timeline.bubble_fraction == pytest.approx((depth - 1) / (micro + depth - 1))


def test_1f1b_keeps_at_most_depth_minus_stage_microbatches_in_flight():
    for stage, actions in one_f_one_b(4, 8).items():
        in_flight = peak = 0
        for a in actions:
            in_flight += 1 if a.kind == "F" else -1
            peak = max(peak, in_flight)
        assert peak == 4 - stage  # GPipe would hold all 8


@pytest.mark.parametrize("depth, micro", [(2, 2), (4, 4), (4, 8), (6, 12)])
def test_chimera_places_both_replicas_and_runs_every_action_once(depth, micro):
    order = chimera(depth, micro)
    for worker, actions in order.items():
        assert {(a.pipe, a.stage) for a in actions} == {("down", worker), ("up", depth - 1 - worker)}
        assert all(worker_of(a, depth) == worker for a in actions)
        per_pipe = {p: sorted((a.kind, a.microbatch) for a in actions if a.pipe == p) for p in ("down", "up")}
        half = micro // 2
        assert per_pipe["down"] == sorted((k, m) for k in "FB" for m in range(half))
        assert per_pipe["up"] == sorted((k, m) for k in "FB" for m in range(half, micro))
    simulate(order, 1.0, 2.0, depth=depth)  # dependencies satisfiable: no deadlock


def test_chimera_halves_bubbles_as_claimed():
    # D=4, N=8 is the goal point; equal forward and backward slots, as in the paper's figure
    assert analytic_bubble("chimera", 4, 8, 1.0, 1.0) <= 0.6 * analytic_bubble("1f1b", 4, 8)
    assert analytic_bubble("chimera", 2, 4) == 0.0  # D=2: the two directions fill each other's bubbles
    assert merge_conflicts(4, 4) > 0  # documented: our 1F1B timelines do collide; the later stage goes first


def test_chimera_order_is_the_papers_at_depth_4():
    """D = 4, N = 4: the per-worker order of Chimera's Fig. 3, as the authors' runtime executes it
    (Shigangli/Chimera chimera_gpt2/gpt2/main_with_runtime.py: warm-up forwards, interleaved forwards,
    1F1B pairs of the other pipeline, interleaved backwards, drain). ``^`` marks the up pipeline."""
    paper = {0: "F0 F1 F2^ B2^ F3^ B3^ B0 B1",
             1: "F0 F2^ F1 F3^ B2^ B0 B3^ B1",
             2: "F2^ F0 F3^ F1 B0 B2^ B1 B3^",
             3: "F2^ F3^ F0 B0 F1 B1 B2^ B3^"}
    assert {w: " ".join(map(str, actions)) for w, actions in chimera(4, 4).items()} == paper


def test_schedule_errors_say_what_to_do():
    with pytest.raises(ValueError, match="even number of stages"):
        chimera(3, 4)
    with pytest.raises(ValueError, match="even number"):
        chimera(4, 5)
    with pytest.raises(ValueError, match="at least 2 stages"):
        gpipe(1, 4)
    text = simulate(one_f_one_b(2, 2), 1.0, 1.0).diagram()
    assert text.splitlines()[0].startswith("worker 0:") and "F0" in text and "B1" in text










# -- splitting and the torch.distributed.pipelining runner -------------------------------------------------

def test_balanced_split_points_and_errors():
    from effplug.parallel.pipeline import balanced_split_points, split_sequential

    assert balanced_split_points([10, 10, 10, 10], 2) == [2]
    assert balanced_split_points([100, 1, 1, 1], 2) == [1]
    assert balanced_split_points([1, 1, 1, 100], 4) == [1, 2, 3]
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(4)])
    stages = split_sequential(model, split_points=[1, 3])
    assert [len(s) for s in stages] == [1, 2, 1] and stages[1][0] is model[1]
    with pytest.raises(ValueError, match="strictly increasing"):
        split_sequential(model, split_points=[3, 1])
    with pytest.raises(TypeError, match="nn.Sequential"):
        split_sequential(torch.nn.Linear(2, 2), 2)


def test_gpt2_split_chains_to_the_full_model():
    from effplug.models import tiny_gpt2
    from effplug.parallel.pipeline import split_gpt2

    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=40, n_positions=16, n_layer=4).eval()
    x = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        for stages in (split_gpt2(model, num_stages=2), split_gpt2(model, split_points=[1, 3])):
            h = x
            for stage in stages:
                h = stage(h)
            assert torch.allclose(h, model(input_ids=x).logits, atol=1e-5)
            assert hasattr(stages[0], "wte") and hasattr(stages[-1], "lm_head")
            assert stages[-1].lm_head.weight is not model.transformer.wte.weight  # untied across ranks


@pytest.mark.parametrize("tied", [False, True])
def test_llama_split_chains_to_the_full_model(tied):
    from effplug.models import tiny_llama
    from effplug.parallel.pipeline import split_decoder, split_gpt2

    torch.manual_seed(0)
    model = tiny_llama(vocab_size=40, num_hidden_layers=4, tie_word_embeddings=tied).eval()
    x = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        full = model(input_ids=x).logits
        for stages in (split_decoder(model, num_stages=2), split_decoder(model, split_points=[1, 2, 3])):
            h = x
            for stage in stages:
                h = stage(h)
            assert torch.allclose(h, full, atol=1e-5)
        # causal: changing the last token leaves every earlier position's logits alone
        h2 = x.clone()
        h2[:, -1] = (h2[:, -1] + 1) % 40
        for stage in stages:
            h2 = stage(h2)
        assert torch.allclose(h2[:, :-1], full[:, :-1], atol=1e-5) and not torch.allclose(h2[:, -1], full[:, -1])
    assert hasattr(stages[-1], "tied_parameter") == tied
    with pytest.raises(TypeError, match="split_decoder"):
        split_gpt2(model, 2)


def _pipeline_worker(rank, world):


    from effplug.parallel.pipeline import PipelineRunner, split_sequential

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    out = {}
    for schedule in ("gpipe", "1f1b"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                    torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
        reference = [p.grad for p in (torch.nn.functional.cross_entropy(model(x), y).backward(), model.parameters())[1]]
        reference = [g.clone() for g in reference]
        model.zero_grad()
        # 2 stages: balanced by parameter count; 4: explicit points, one Linear + Tanh each
        stages = split_sequential(model, num_stages=2) if world == 2 else split_sequential(model, split_points=[2, 4, 6])
        runner = PipelineRunner(stages[rank], rank, world, schedule=schedule, microbatches=4,
                                loss_fn=torch.nn.functional.cross_entropy)
        loss = runner.step(x if rank == 0 else None, y if rank == world - 1 else None)
        mine = {id(p) for p in stages[rank].parameters()}
        errors = [(p.grad - r).abs().max().item() for p, r in zip(model.parameters(), reference, strict=True)
                  if id(p) in mine]
        out[schedule] = {"max_err": max(errors), "params": len(errors),
                         "loss": None if loss is None else loss.item()}
    out["acsgd"] = _acsgd_pipeline_steps(rank, world, x, y)
    return out


def _acsgd_pipeline_steps(rank, world, x, y) -> dict:
    """1F1B with AC-SGD: a warm-up step (exact), then the same batch again (compressed) with unchanged weights."""
    import torch.distributed as dist

    from effplug.parallel.pipeline import PipelineRunner, split_sequential
    from effplug.parallel.pipeline.acsgd import ACSGDConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    reference = {id(p): p.grad.clone() for p in model.parameters()}
    stages = split_sequential(model, split_points=[2, 4, 6] if world == 4 else [4])
    runner = PipelineRunner(stages[rank], rank, world, schedule="1f1b", microbatches=4,
                            loss_fn=torch.nn.functional.cross_entropy, acsgd=ACSGDConfig(bits=4, group_size=64))
    ids = torch.arange(16) * 3 + 5
    out = {}
    for step in ("warmup", "compressed"):
        for p in model.parameters():
            p.grad = None
        runner.step(x if rank == 0 else None, y if rank == world - 1 else None, sample_ids=ids)
        out[step] = {"compressed": runner.acsgd.compressed, "rel_err": max(
            ((p.grad - reference[id(p)]).norm() / reference[id(p)].norm()).item() for p in stages[rank].parameters())}
    state = runner.acsgd.state_dict()
    gathered = [None] * world
    dist.all_gather_object(gathered, state)
    # the sender of boundary k (rank k) and its receiver (rank k+1) hold identical caches
    out["caches_equal"] = all(
        gathered[k]["sender"]["cache"].keys() == gathered[k + 1]["receiver"]["cache"].keys()
        and all(torch.equal(v, gathered[k + 1]["receiver"]["cache"][key]) for key, v in gathered[k]["sender"]["cache"].items())
        for k in range(world - 1))
    out["sent"], out["dense"] = runner.acsgd.meter.sent_bytes, runner.acsgd.meter.dense_bytes
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_gpipe_and_1f1b_gradients_match_one_process(world):

    from effplug.launch import spawn_ranks

    results = spawn_ranks(_pipeline_worker, world)
    for rank in range(world):
        for schedule in ("gpipe", "1f1b"):
            r = results[rank][schedule]
            assert r["params"] > 0 and r["max_err"] < 1e-6, (rank, schedule, r)
    assert results[world - 1]["1f1b"]["loss"] > 0 and results[0]["1f1b"]["loss"] is None
    for rank in range(world):  # AC-SGD: exact warm-up, then 8-bit gradients (the activation change is zero here)
        acsgd = results[rank]["acsgd"]
        assert not acsgd["warmup"]["compressed"] and acsgd["compressed"]["compressed"]
        assert acsgd["warmup"]["rel_err"] < 1e-6
        assert 0 < acsgd["compressed"]["rel_err"] < 0.03 if rank < world - 1 else acsgd["compressed"]["rel_err"] < 1e-6
        assert acsgd["caches_equal"]
        assert acsgd["sent"] < acsgd["dense"]


def _chimera_worker(rank, world, micro):
    import copy

    import torch.distributed as dist

    from effplug.parallel.pipeline import split_sequential
    from effplug.parallel.pipeline.chimera import ChimeraRunner

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    torch.manual_seed(0)
    layers = [torch.nn.Linear(32, 48), torch.nn.Tanh()]
    for _ in range(world - 2):
        layers += [torch.nn.Linear(48, 48), torch.nn.Tanh()]
    layers += [torch.nn.Linear(48, 48), torch.nn.Tanh(), torch.nn.Linear(48, 10)]
    model = torch.nn.Sequential(*layers)
    replica = copy.deepcopy(model)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    reference = {id(p): p.grad.clone() for p in model.parameters()}
    model.zero_grad()
    points = list(range(2, 2 * world, 2))  # one Linear (+ Tanh) per stage, the last stage two Linears
    down_stages, up_stages = split_sequential(model, split_points=points), split_sequential(replica, split_points=points)
    runner = ChimeraRunner(down_stages[rank], up_stages[world - 1 - rank], micro, torch.nn.functional.cross_entropy)
    loss = runner.step(x, y)
    errors = []
    for p_down, p_up in zip(down_stages[rank].parameters(), down_stages[rank].parameters(), strict=True):
        errors.append((p_down.grad - reference[id(p_up)]).abs().max().item())
    for p_up, p_ref in zip(up_stages[world - 1 - rank].parameters(), down_stages[world - 1 - rank].parameters(), strict=True):
        errors.append((p_up.grad - reference[id(p_ref)]).abs().max().item())
    # one SGD step on both replicas, then every stage's two copies must still be equal
    with torch.no_grad():
        for _, module in runner.stage_modules():
            for p in module.parameters():
                p -= 0.1 * p.grad
    mine = {index: [p.detach().clone() for p in module.parameters()] for index, module in runner.stage_modules()}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    same = all(all(torch.equal(a, b) for a, b in zip(gathered[s][s], gathered[world - 1 - s][s], strict=True))
               for s in range(world))
    return {"max_err": max(errors), "loss": None if loss is None else loss.item(), "replicas_equal": same}


@pytest.mark.parametrize("world, micro", [(2, 4), (4, 8)])
def test_chimera_gradients_match_one_process_and_replicas_stay_identical(world, micro):

    from effplug.launch import spawn_ranks

    results = spawn_ranks(_chimera_worker, world, micro)
    for rank in range(world):
        assert results[rank]["max_err"] < 1e-6, (rank, results[rank])
        assert results[rank]["replicas_equal"]
    # the last stage of the down replica is on rank D-1, of the up replica on rank 0: both report a loss
    assert results[0]["loss"] > 0 and results[world - 1]["loss"] > 0


def _tied_worker(rank, world):


    from effplug.models import tiny_gpt2
    from effplug.parallel.pipeline import PipelineRunner, split_gpt2

    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=40, n_positions=16, n_layer=2).eval()  # no dropout: comparable runs
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 40, (8, 16), generator=gen), torch.randint(0, 40, (8, 16), generator=gen)

    def lm_loss(logits, target):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    lm_loss(model(input_ids=x).logits, y).backward()
    tied_reference = model.transformer.wte.weight.grad.clone()  # embedding + head contributions
    model.zero_grad()
    stages = split_gpt2(model, num_stages=world)
    runner = PipelineRunner(stages[rank], rank, world, schedule="1f1b", microbatches=4, loss_fn=lm_loss,
                            sync_tied=True)
    runner.step(x if rank == 0 else None, y if rank == world - 1 else None)
    tied = stages[rank].tied_parameter
    return (tied.grad - tied_reference).abs().max().item()


def test_gpt2_split_keeps_the_embedding_and_head_tied():

    from effplug.launch import spawn_ranks

    results = spawn_ranks(_tied_worker, 2)
    assert results[0] < 1e-5 and results[1] < 1e-5  # both copies get the tied weight's full gradient


def test_pipeline_entry_points_reject_bad_settings():
    from effplug.parallel.pipeline import PipelineRunner, split_gpt2

    with pytest.raises(ValueError, match="use one of"):
        PipelineRunner(torch.nn.Linear(2, 2), 0, 2, schedule="interleaved")
    with pytest.raises(TypeError, match="split_sequential"):
        split_gpt2(torch.nn.Sequential(torch.nn.Linear(2, 2)), 2)
    from effplug.models import tiny_gpt2

    with pytest.raises(ValueError, match="num_stages"):
        split_gpt2(tiny_gpt2(vocab_size=40, n_positions=16))
    from effplug.parallel.pipeline.acsgd import ACSGDConfig

    with pytest.raises(ValueError, match="2 or 4 bits"):
        ACSGDConfig(bits=3)
    with pytest.raises(ValueError, match="remember"):  # a compressed message needs the sample's cache first
        ACSGDCodec().encode_bytes(torch.randn(2, 8), torch.tensor([1, 2]))
    pytest.importorskip("pytorch_lightning")
    from effplug.strategies import PipelineStrategy

    with pytest.raises(ValueError, match="use one of"):
        PipelineStrategy(schedule="zbv")
    with pytest.raises(ValueError, match="positive int"):
        PipelineStrategy(microbatches=0)
    strategy = PipelineStrategy(schedule="chimera", microbatches=8)
    assert (strategy.schedule, strategy.microbatches) == ("chimera", 8)
    with pytest.raises(ValueError, match="pipeline_gpipe and pipeline_1f1b"):
        PipelineStrategy(schedule="chimera", acsgd=True)
    with pytest.raises(TypeError, match="ACSGDConfig"):
        PipelineStrategy(acsgd="4bit")
    assert PipelineStrategy(acsgd={"bits": 2}).acsgd == ACSGDConfig(bits=2)
