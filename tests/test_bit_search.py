"""Mixed-precision bit search: Hutchinson's trace against an exact Hessian, the exact allocation against brute
force, and ``QATConfig(bits="auto")`` through quantize_model and its errors."""

import itertools
import logging

import pytest
import torch
from conftest import lm_rows, tiny_qwen2

from effplug.quant import QATConfig, quantize_model
from effplug.quant.bit_allocation import LayerChoice, allocate_bits
from effplug.quant.sensitivity import layer_sensitivity


def test_hutchinson_trace_matches_the_exact_hessian_of_a_quadratic():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6))
    b = torch.nn.Parameter(torch.randn(3, 2))
    ha = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))  # Tr = 21
    m = torch.randn(6, 6)
    hb = m @ m.T  # Tr(H_bb) = ||m||_F^2
    coupling = torch.randn(6, 6)

    def loss():
        bf = b.reshape(-1)
        return 0.5 * a @ ha @ a + 0.5 * bf @ hb @ bf + a @ coupling @ bf  # off-diagonal blocks must not count

    holder = torch.nn.Module()
    out = layer_sensitivity(holder, {"a": a, "b": b}, [loss], method="hessian", max_probes=400, min_probes=400)
    # the cross terms v_a' C v_b vanish in expectation only: within 4 standard errors over 400 probes
    assert out["a"].trace == pytest.approx(21.0, abs=4 * out["a"].stderr) and out["a"].stderr < 0.5
    assert out["b"].trace == pytest.approx(float(hb.trace()), abs=4 * out["b"].stderr + 1e-6)
    assert out["b"].probes == 400 and out["b"].stderr > 0 and out["a"].numel == 6
    fisher = layer_sensitivity(holder, {"a": a}, [loss], method="fisher")
    grad = ha @ a.detach() + coupling @ b.detach().reshape(-1)
    assert fisher["a"].trace == pytest.approx(float(grad.pow(2).sum()), rel=1e-5)


def test_hutchinson_stops_when_the_running_means_settle():
    p = torch.nn.Parameter(torch.ones(4))
    out = layer_sensitivity(torch.nn.Module(), {"p": p}, [lambda: (p**2).sum()], max_probes=50, min_probes=4)
    assert out["p"].probes == 4 and out["p"].trace == pytest.approx(8.0)  # diagonal: constant, stops at min_probes


def test_allocation_is_the_exact_optimum_of_brute_force():
    gen = torch.Generator().manual_seed(3)
    widths = (2, 3, 4, 8)
    for trial in range(20):
        layers = []
        for i in range(5):
            numel = int(torch.randint(10, 200, (1,), generator=gen))
            trace = float(torch.rand(1, generator=gen)) * 10
            layers.append(LayerChoice(f"l{i}", numel, {b: trace * 4.0 ** -b for b in widths}))
        total = sum(layer.numel for layer in layers)
        budget = (2.5 + trial * 0.2) * total
        got = allocate_bits(layers, budget)
        best = min((c for c in itertools.product(widths, repeat=5)
                    if sum(layer.numel * b for layer, b in zip(layers, c, strict=False)) <= budget),
                   key=lambda c: sum(layer.costs[b] for layer, b in zip(layers, c, strict=False)))
        cost = lambda choice: sum(layer.costs[b] for layer, b in zip(layers, choice, strict=False))  # noqa: E731
        assert cost([got[f"l{i}"] for i in range(5)]) == pytest.approx(cost(best), rel=1e-12)
        assert sum(layer.numel * got[layer.name] for layer in layers) <= budget
    with pytest.raises(ValueError, match="below the smallest allocation"):
        allocate_bits(layers, 1.0 * total)


def _mlp_and_losses():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 8, generator=gen), torch.randint(0, 4, (128,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # HAWQ searches a trained model
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, [lambda: torch.nn.functional.cross_entropy(model(x), y)]


def test_auto_bits_meet_the_budget_and_beat_uniform_on_the_objective(caplog):
    model, losses = _mlp_and_losses()
    with caplog.at_level(logging.INFO, logger="effplug.quant"):
        quantize_model(model, QATConfig(bits="auto", budget_bits=3.0, act_bits=None, first_last_bits=8),
                       sensitivity_losses=losses)
    search = model._effplug_bit_search
    assert search.bits["0"] == 8 and search.bits["6"] == 8  # first/last fixed, and counted in the budget
    assert search.average_bits <= 3.0 + 1e-9 and set(search.sensitivity) == {"2", "4"}
    assert model[2].weight_quant.bits == search.bits["2"] and model[4].weight_quant.bits == search.bits["4"]
    assert "| layer | weights | trace" in caplog.text and "average weight bits" in caplog.text
    # the objective is at most that of any uniform assignment of the searched layers within the same budget
    numel = {"2": 4096, "4": 4096}
    fixed = 8 * (8 * 64 + 64 * 4)
    objective = lambda bits: sum(search.sensitivity[n].trace * search.mse[n][b] for n, b in bits.items())  # noqa
    for b in (2, 3, 4, 8):
        if fixed + b * sum(numel.values()) <= 3.0 * (sum(numel.values()) + 8 * 64 + 64 * 4):
            assert objective({n: search.bits[n] for n in numel}) <= objective({n: b for n in numel}) + 1e-15


def test_auto_bits_say_what_they_need():
    with pytest.raises(ValueError, match="exactly one budget"):
        QATConfig(bits="auto")
    with pytest.raises(ValueError, match="only apply with bits='auto'"):
        QATConfig(budget_bits=3.0)
    with pytest.raises(ValueError, match="search_method='newton'"):
        QATConfig(bits="auto", budget_bits=3.0, search_method="newton")
    with pytest.raises(ValueError, match="budget_bits=1.5: use a number from 2 to 8"):
        QATConfig(bits="auto", budget_bits=1.5)
    with pytest.raises(TypeError, match="did you mean 'budget_bits'"):
        QATConfig(bits="auto", budget_bit=3.0)
    model, _ = _mlp_and_losses()
    with pytest.raises(ValueError, match="needs calibration data: quantize_model"):
        quantize_model(model, QATConfig(bits="auto", budget_bits=3.0))
    model, losses = _mlp_and_losses()
    with pytest.raises(ValueError, match="raise budget_bits"):
        quantize_model(model, QATConfig(bits="auto", budget_bits=2.0), sensitivity_losses=losses)  # edges at 8


def test_lightning_callback_searches_on_training_batches_and_checkpoints_the_choice(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.demos import Transformer

    from effplug.callbacks import QuantizationAwareTraining

    class LM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Transformer(vocab_size=32, ninp=32, nhead=2, nhid=64, nlayers=2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.nll_loss(self.model(x, y).view(-1, 32), y.view(-1))
            self.log("train_loss", loss)  # muted while calibrating, as no loop runs yet
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (16, 2, 12), generator=gen)
    loader = torch.utils.data.DataLoader([(d[0], d[1]) for d in data], batch_size=4)
    torch.manual_seed(0)
    module = LM()
    callback = QuantizationAwareTraining(bits="auto", budget_bits=4.0, search_method="fisher")  # keywords, as typed
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(module, loader)
    search = module._effplug_bit_search
    assert callback.chosen_bits == search.bits and search.average_bits <= 4.0 + 1e-9
    assert len(search.sensitivity) >= 4 and all(s.probes == 2 for s in search.sensitivity.values())
    from effplug.state import unseal

    assert unseal(callback.state_dict(), "QuantizationAwareTraining")["bits"] == search.bits
    wrong = dict(search.bits)
    wrong[next(iter(search.sensitivity))] = 8 if search.bits[next(iter(search.sensitivity))] != 8 else 2
    from effplug.state import seal, unseal

    state = unseal(callback.state_dict(), "QuantizationAwareTraining")
    state["bits"] = wrong
    state = seal(state)
    with pytest.raises(ValueError, match="resume with QATConfig"):
        callback.load_state_dict(state)


def test_eff_trainer_searches_bits_on_its_train_dataset(tmp_path):
    transformers = pytest.importorskip("transformers")
    from effplug.hf import EffTrainer

    model = tiny_qwen2()
    rows = lm_rows()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no")
    trainer = EffTrainer(model=model, args=args, train_dataset=rows,
                         quantization={"bits": "auto", "budget_bits": 3.0, "act_bits": None})
    search = model._effplug_bit_search
    assert search.average_bits <= 3.0 + 1e-9 and len(search.sensitivity) == 13  # 7 linears x 2 layers + lm_head, less first and last
    assert len(set(search.bits.values())) >= 2  # a real mix, not a uniform width
    trainer.train()
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.weight_quant.bits == search.bits["model.layers.0.self_attn.q_proj"]


def build_for_cli():
    """The ``--model`` factory of the CLI test: (model, calibration loss closures)."""
    return _mlp_and_losses()


def test_quant_search_cli_prints_the_table_and_a_config_that_reproduces_it(capsys, tmp_path):
    import json

    from effplug import cli

    path = tmp_path / "search.json"
    assert cli.main(["quant", "search", "--model", "test_bit_search:build_for_cli", "--budget-bits", "3.0",
                     "--act-bits", "8", "--no-progress", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| layer | weights | trace" in out and "average weight bits" in out
    assert "| 0 | - |" in out and "first/last layer" in out  # the fixed layers say why
    printed = out.split("to train with these bits: ")[1].strip()
    report = json.loads(path.read_text())
    chosen = {r["layer"]: r["bits"] for r in report["rows"]}
    assert report["average_bits"] <= 3.0 + 1e-9 and set(chosen) == {"0", "2", "4", "6"}
    # the printed QATConfig, pasted into a script, quantizes a fresh copy to the searched bits and act bits
    model, _ = _mlp_and_losses()
    quantize_model(model, eval(printed, {"QATConfig": QATConfig}))
    assert {n: model[int(n)].weight_quant.bits for n in chosen} == chosen
    assert all(model[int(n)].act_quant.bits == 8 for n in chosen if n != "0")


def test_quant_search_cli_errors_say_what_to_do(capsys):
    from effplug import cli

    assert cli.main(["quant", "search", "--model", "test_bit_search:build_for_cli"]) == 2
    assert "give one budget: --budget-bits" in capsys.readouterr().err
    assert cli.main(["quant", "search", "--budget-bits", "1", "--model", "test_bit_search:build_for_cli"]) == 2
    assert "--budget-bits 1.0: use a number from 2 to 8" in capsys.readouterr().err
    assert cli.main(["quant", "search", "--budget-bits", "3", "--model", "test_bit_search:nothing"]) == 2
    assert "cannot load it" in capsys.readouterr().err
    assert cli.main(["quant", "search", "--budget-bits", "3", "--task", "mnist"]) == 2
    assert "choose from 'digits-resnet', 'char-gpt2'" in capsys.readouterr().err
    assert cli.main(["quant", "search", "--budget-bits", "3", "--model", "test_bit_search:_auto_rows"]) == 2
    assert "must return (model, losses)" in capsys.readouterr().err


def _auto_rows():
    return [1, 2, 3]


def test_quant_search_cli_on_an_embedded_task_trains_then_searches(capsys):
    pytest.importorskip("pytorch_lightning")
    from effplug import cli

    assert cli.main(["quant", "search", "--task", "digits-resnet", "--budget-bits", "4", "--train-steps", "3",
                     "--calibration-batches", "1", "--method", "fisher"]) == 0
    captured = capsys.readouterr()
    assert "train 3/3" in captured.err and "batch 1/1" in captured.err
    assert "| model.stem.0 | - |" in captured.out and "| model.stage1.conv1 | 9,216 |" in captured.out
    assert "average weight bits" in captured.out
