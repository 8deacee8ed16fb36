"""LUQ and LNS-Madam through their Lightning precision plugins and their plain/HF functions."""

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")


def _digits(n=256, **kw):
    from effplug.data import digits
    from effplug.lit_modules import ClassifierModule
    from effplug.models import DigitsResNet

    split = digits()
    data = torch.utils.data.TensorDataset(split.train_x[:n], split.train_y[:n])
    return ClassifierModule(DigitsResNet(width=8), **kw), torch.utils.data.DataLoader(data, batch_size=32)


def _trainer(root, steps, **kw):
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root, **kw)


def test_luq_precision_trains_keeps_callbacks_and_ends_in_full_precision(tmp_path):
    from effplug.precision import LUQPrecision
    from effplug.quant.luq import SAWBQuantizer

    pl.seed_everything(0, verbose=False)
    module, loader = _digits()
    plugin = LUQPrecision(smp=2, high_precision_steps=2)
    states = []

    class Probe(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            quantizers = [m for m in pl_module.modules() if isinstance(m, SAWBQuantizer)]
            states.append(all(q.enabled for q in quantizers) and len(quantizers) == 12)

    _trainer(tmp_path, 5, plugins=[plugin], callbacks=[Probe()]).fit(module, loader)
    assert states == [True, True, True, False, False]  # the hook fired every step; last 2 in full precision
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_lns_precision_with_lns_madam_keeps_weights_on_the_grid(tmp_path):
    from effplug.optim import LNSMadam
    from effplug.precision import LNSPrecision

    pl.seed_everything(0, verbose=False)
    module, loader = _digits(lr=1 / 8)
    module.optimizer_class = LNSMadam
    trainer = _trainer(tmp_path, 4, plugins=[LNSPrecision(activations=True, gradients=True)])
    trainer.fit(module, loader)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, LNSMadam)
    weight = module.model.stage1.conv1.weight
    state = optimizer.state[weight]
    codes = -torch.log2(weight.detach().abs() / state["max"]) * 8
    torch.testing.assert_close(codes, torch.round(codes), atol=1e-3, rtol=0)


def test_lowprec_plugins_reject_bad_settings():
    from effplug.precision import LNSPrecision, LUQPrecision

    with pytest.raises(ValueError, match="use bits=4"):
        LUQPrecision(bits=2)
    with pytest.raises(ValueError, match="high_precision_steps=-1"):
        LUQPrecision(high_precision_steps=-1)
    with pytest.raises(ValueError, match="gamma=0"):
        LNSPrecision(gamma=0)


def test_both_plugins_compose_with_accumulation_and_resume(tmp_path):
    from effplug.optim import LNSMadam
    from effplug.precision import LNSPrecision, LUQPrecision
    from effplug.quant.luq import luq_state_dict

    for name, make_plugin in (("luq", lambda: LUQPrecision(high_precision_steps=1)), ("lns", lambda: LNSPrecision())):
        pl.seed_everything(0, verbose=False)
        module, loader = _digits(lr=1 / 8)
        if name == "lns":
            module.optimizer_class = LNSMadam
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / name, save_last=True, every_n_train_steps=2)
        trainer = _trainer(tmp_path / name, 2, plugins=[make_plugin()], callbacks=[ckpt], accumulate_grad_batches=2,
                           enable_checkpointing=True)
        trainer.fit(module, loader)
        saved = {n: p.detach().clone() for n, p in module.named_parameters()}
        module2, _ = _digits(lr=1 / 8)
        if name == "lns":
            module2.optimizer_class = LNSMadam
        seen = {}

        class Probe(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                seen.setdefault("params", {n: p.detach().clone() for n, p in pl_module.named_parameters()})
                seen.setdefault("luq_seeds", luq_state_dict(pl_module))

        plugin = make_plugin()
        resumed = _trainer(tmp_path / name, 4, plugins=[plugin], callbacks=[Probe()], accumulate_grad_batches=2)
        resumed.fit(module2, loader, ckpt_path=str(tmp_path / name / "last.ckpt"))
        assert all(torch.equal(seen["params"][n], saved[n]) for n in saved), name
        assert resumed.global_step == 4
        if name == "luq":
            assert plugin.full_precision  # the last step ran in high precision after the resume too
            stored = torch.load(tmp_path / name / "last.ckpt", weights_only=True)["LUQPrecision"]["seeds"]
            assert stored and all(isinstance(v, int) for v in stored.values())
            assert seen["luq_seeds"] == stored  # the first resumed step draws where the saved run stopped
        else:
            assert "codes" in next(iter(resumed.optimizers[0].state.values()))


def test_hf_trainer_doors_prepare_luq_and_lns_madam(tmp_path):
    transformers = pytest.importorskip("transformers")
    from effplug.data import stdlib_text
    from effplug.models import tiny_gpt2
    from effplug.optim import LNSMadam
    from effplug.quant.lns import prepare_lns
    from effplug.quant.luq import SAWBQuantizer, prepare_luq

    corpus = stdlib_text(max_chars=30_000)
    x, _ = corpus.windows("train", 32, 32, seed=0)
    rows = [{"input_ids": a, "labels": a} for a in x]

    def args(name, **kw):
        return transformers.TrainingArguments(output_dir=str(tmp_path / name), max_steps=2, per_device_train_batch_size=8,
                                              report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no", **kw)

    torch.manual_seed(0)
    model = prepare_luq(tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=32))
    assert sum(isinstance(m, SAWBQuantizer) for m in model.modules()) == 2 * 9
    out = transformers.Trainer(model=model, args=args("luq"), train_dataset=rows).train()
    assert out.training_loss > 0 and all(torch.isfinite(p).all() for p in model.parameters())

    model = prepare_lns(tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=32))
    optimizer = LNSMadam(model.parameters(), lr=1 / 8)
    # HF's default linear decay takes lr*gamma off the integers (1/8 -> 1/16 at step 2): LNSMadam refuses that
    with pytest.raises(ValueError, match="lr_scheduler_type='constant'"):
        transformers.Trainer(model=model, args=args("lns_linear"), train_dataset=rows,
                             optimizers=(optimizer, None)).train()
    model = prepare_lns(tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=32))
    optimizer = LNSMadam(model.parameters(), lr=1 / 8)
    transformers.Trainer(model=model, args=args("lns", lr_scheduler_type="constant"), train_dataset=rows,
                         optimizers=(optimizer, None)).train()
    assert all("codes" in optimizer.state[p] for p in model.parameters() if p.grad is not None)
