"""Activation compression through its doors: a real Lightning Trainer, a real HF Trainer, DDP on gloo."""


import pytest
import torch

from effplug.compress import CompressionConfig, compressed_activations

pl = pytest.importorskip("pytorch_lightning")
transformers = pytest.importorskip("transformers")


def _digits_module_and_loader(batch_size=64):
    from effplug.data import digits
    from effplug.lit_modules import ClassifierModule
    from effplug.models import DigitsResNet

    split = digits()
    data = torch.utils.data.TensorDataset(split.train_x[:512], split.train_y[:512])
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    return ClassifierModule(DigitsResNet(width=16)), loader


def _trainer(tmp_path, steps, callbacks, **kw):
    return pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **kw,
    )


def test_lightning_callback_trains_checkpoints_and_resumes(tmp_path):
    from effplug.callbacks import ActivationCompression

    pl.seed_everything(0, verbose=False)
    module, loader = _digits_module_and_loader()
    callback = ActivationCompression(method="gact", bits=2, recalibrate_every=3, probes_per_step=None)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=4)
    _trainer(tmp_path, 4, [callback, ckpt], accumulate_grad_batches=2, precision="bf16-mixed").fit(module, loader)
    assert callback.engine is None  # detached at teardown
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"][callback.state_key]
    assert saved["method"]["calibrations"] >= 2  # forwards 0, 3, 6 calibrate (8 forwards for 4 steps)
    assert saved["forward_count"] == 8
    assert saved["method"]["allocation"].float().mean() <= 8

    resumed_cb = ActivationCompression(method="gact", bits=2, recalibrate_every=3, probes_per_step=None)
    module2, _ = _digits_module_and_loader()
    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("forward_count", resumed_cb.engine.forward_count)
            seen.setdefault("allocation", resumed_cb.engine.method.allocation.clone())

    _trainer(tmp_path, 6, [resumed_cb, Probe()], accumulate_grad_batches=2).fit(
        module2, loader, ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert seen["forward_count"] == 8
    assert torch.equal(seen["allocation"], saved["method"]["allocation"])

    # other settings find the old state and refuse, naming both
    with pytest.raises(ValueError, match=r"trained with bits=2.*this run has bits=4"):
        _trainer(tmp_path, 6, [ActivationCompression(method="gact", bits=4, recalibrate_every=3, probes_per_step=None)]).fit(
            _digits_module_and_loader()[0], loader, ckpt_path=str(tmp_path / "last.ckpt"))
    # flipped bytes in the engine's state are caught on load
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    checkpoint["callbacks"][callback.state_key]["method"]["allocation"][0] += 1
    torch.save(checkpoint, tmp_path / "flipped.ckpt")
    with pytest.raises(ValueError, match="fails its checksum"):
        _trainer(tmp_path, 6, [ActivationCompression(method="gact", bits=2, recalibrate_every=3, probes_per_step=None)]).fit(
            _digits_module_and_loader()[0], loader, ckpt_path=str(tmp_path / "flipped.ckpt"))


def test_lightning_callback_matches_uncompressed_training(tmp_path):
    """Same seed, same data: 8-bit compressed training stays close to the exact run."""
    from effplug.callbacks import ActivationCompression

    results = {}
    for name, callbacks in (("exact", []), ("actnn8", [ActivationCompression(method="actnn", bits=8, seed=0)])):
        pl.seed_everything(0, verbose=False)
        module, loader = _digits_module_and_loader()
        _trainer(tmp_path / name, 8, callbacks).fit(module, loader)
        results[name] = torch.cat([p.detach().flatten() for p in module.parameters()])
    drift = (results["actnn8"] - results["exact"]).norm() / results["exact"].norm()
    assert drift < 0.02
    assert callbacks[0].state_dict() == {}  # detached engines leave no state behind


def _char_lm_dataset(n=64, block=32):
    from effplug.data import stdlib_text

    corpus = stdlib_text(max_chars=50_000)
    x, y = corpus.windows("train", block, n, seed=0)
    rows = [{"input_ids": a, "labels": a} for a in x]
    return corpus.vocab_size, rows


def _hf_args(tmp_path, **kw):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=3e-3, report_to=[],
        use_cpu=True, disable_tqdm=True, save_strategy="steps", save_steps=3, logging_steps=1, **kw,
    )


def test_hf_callback_and_eff_trainer(tmp_path, caplog, capsys):
    from effplug.hf import ActivationCompressionCallback, EffTrainer
    from effplug.models import tiny_gpt2

    vocab, rows = _char_lm_dataset()
    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=vocab, n_positions=32)
    callback = ActivationCompressionCallback(method="actnn", bits=4)
    trainer = transformers.Trainer(model=model, args=_hf_args(tmp_path / "cb", max_steps=3), train_dataset=rows,
                                   callbacks=[callback])
    out = trainer.train()
    assert callback.engine.forward_count == 3
    assert callback.engine.last_report.ratio > 4
    assert "act_saved_ratio" in capsys.readouterr().out  # added to every log line the Trainer reports
    assert (tmp_path / "cb" / "checkpoint-3" / "effplug_activation_compression.pt").exists()
    assert out.training_loss > 0

    # GACT needs the loss before backward: EffTrainer calibrates inside compute_loss.
    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=vocab, n_positions=32)
    args = _hf_args(tmp_path / "eff", max_steps=3, gradient_accumulation_steps=2)
    trainer = EffTrainer(model=model, args=args, train_dataset=rows,
                         activation_compression={"method": "gact", "bits": 2, "recalibrate_every": 4, "probes_per_step": None})
    trainer.train()
    engine = trainer.activation_callback.engine
    assert engine.method.calibrations == 2  # forwards 0 and 4 of 6
    assert engine.method.average_bits() <= 2

    # Resume: the engine state comes back from the checkpoint folder.
    model = tiny_gpt2(vocab_size=vocab, n_positions=32)
    args = _hf_args(tmp_path / "eff", max_steps=4, gradient_accumulation_steps=2)
    resumed = EffTrainer(model=model, args=args, train_dataset=rows,
                         activation_compression={"method": "gact", "bits": 2, "recalibrate_every": 4, "probes_per_step": None})
    resumed.train(resume_from_checkpoint=str(tmp_path / "eff" / "checkpoint-3"))
    assert resumed.activation_callback.engine.forward_count == 8  # 6 restored + 2 new
    # ... also from a copy outside output_dir: read from the folder being resumed
    import shutil

    shutil.copytree(tmp_path / "eff" / "checkpoint-3", tmp_path / "copied" / "step3")
    model = tiny_gpt2(vocab_size=vocab, n_positions=32)
    args = _hf_args(tmp_path / "elsewhere", max_steps=4, gradient_accumulation_steps=2)
    moved = EffTrainer(model=model, args=args, train_dataset=rows,
                       activation_compression={"method": "gact", "bits": 2, "recalibrate_every": 4, "probes_per_step": None})
    moved.train(resume_from_checkpoint=str(tmp_path / "copied" / "step3"))
    assert moved.activation_callback.engine.forward_count == 8

    # A plain Trainer callback cannot calibrate: it says so.
    with caplog.at_level("WARNING"):
        transformers.Trainer(model=model, args=_hf_args(tmp_path / "warn", max_steps=1), train_dataset=rows,
                             callbacks=[ActivationCompressionCallback(method="gact", bits=2)]).train()
    assert "EffTrainer" in caplog.text


def _ddp_worker(rank, world):
    import torch.distributed as dist

    from effplug.models import DigitsResNet

    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(DigitsResNet(width=16))
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    with compressed_activations(model.module, CompressionConfig(bits=8, seed=rank)) as engine:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(grads) for _ in range(world)]
    dist.all_gather(gathered, grads)
    return (torch.equal(gathered[0], gathered[1]), engine.last_report.ratio)


def test_ddp_two_gloo_processes():

    from effplug.launch import spawn_ranks

    results = spawn_ranks(_ddp_worker, 2)
    for rank in range(2):
        same, ratio = results[rank]
        assert same  # DDP averaged the (compressed-activation) gradients across ranks
        assert ratio > 2


def test_doors_reject_bad_settings_early():
    from types import SimpleNamespace

    from effplug.callbacks import ActivationCompression
    from effplug.hf import ActivationCompressionCallback, EffTrainer

    with pytest.raises(ValueError, match="bits=3 is not supported"):
        ActivationCompression(method="actnn", bits=3)
    with pytest.raises(ValueError, match="method='zip'"):
        ActivationCompressionCallback(method="zip")
    with pytest.raises(ValueError, match="needs the model"):
        ActivationCompressionCallback().on_train_begin(SimpleNamespace(output_dir="."), SimpleNamespace(global_step=0), None)
    with pytest.raises(ValueError, match="bits=5"):
        EffTrainer(model=torch.nn.Linear(2, 2), activation_compression={"bits": 5})


def test_misspelled_settings_name_the_users_class_and_the_valid_fields():
    from effplug.callbacks import ActivationCompression
    from effplug.hf import ActivationCompressionCallback, EffTrainer

    for make, owner in ((lambda: ActivationCompression(metod="actnn"), "ActivationCompression"),
                        (lambda: ActivationCompressionCallback(metod="actnn"), "ActivationCompressionCallback"),
                        (lambda: EffTrainer(model=torch.nn.Linear(2, 2), activation_compression={"metod": "gact"}),
                         r"EffTrainer\(activation_compression=...\)")):
        with pytest.raises(TypeError, match=rf"{owner} got unknown option\(s\) 'metod' \(did you mean 'method'\?\); "
                                            "valid options: bits, "):
            make()
    with pytest.raises(ValueError, match="did you mean 'bits'"):
        ActivationCompression(bit=4)
    # a string is the method's name; anything else fails at construction, not inside train()
    assert EffTrainer(model=torch.nn.Linear(2, 2), args=transformers.TrainingArguments(
        output_dir="/tmp/effplug-unused", use_cpu=True, report_to=[]),
        activation_compression="actnn").activation_callback.config.method == "actnn"
    with pytest.raises(TypeError, match="takes a CompressionConfig, a dict of its fields or a method name"):
        EffTrainer(model=torch.nn.Linear(2, 2), activation_compression=4)


def test_hf_metrics_reach_the_log_history_and_loggers_before_ours(tmp_path):
    from effplug.hf import ActivationCompressionCallback, EffTrainer
    from effplug.models import tiny_gpt2

    seen = []

    class Logger(transformers.TrainerCallback):  # stands in for a report_to integration, registered first
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    vocab, rows = _char_lm_dataset()
    torch.manual_seed(0)
    trainer = transformers.Trainer(model=tiny_gpt2(vocab_size=vocab, n_positions=32),
                                   args=_hf_args(tmp_path / "cb", max_steps=2), train_dataset=rows,
                                   callbacks=[Logger(), ActivationCompressionCallback(method="actnn", bits=4)])
    trainer.train()
    assert any("act_saved_ratio" in entry for entry in trainer.state.log_history)
    assert any("act_saved_ratio" in entry for entry in seen)
    eff = EffTrainer(model=tiny_gpt2(vocab_size=vocab, n_positions=32), args=_hf_args(tmp_path / "eff", max_steps=2),
                     train_dataset=rows, callbacks=[Logger()], activation_compression="actnn",
                     quantization={"bit_widths": [4, 8], "act_bits": 8})
    seen.clear()
    eff.train()
    logged = [entry for entry in eff.state.log_history if "loss" in entry]
    assert logged and all("act_saved_ratio" in e and "qat_loss_4bit" in e and e["loss_is_sum_over_widths"] == 2
                          for e in logged)
    assert any("qat_loss_8bit" in entry and "act_saved_ratio" in entry for entry in seen)


def test_eff_seq2seq_trainer_trains_t5_with_compression_and_qat(tmp_path):
    from effplug.hf import EffSeq2SeqTrainer
    from effplug.quant import quantized_layers

    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=2, d_kv=16, decoder_start_token_id=0, pad_token_id=0)
    model = transformers.T5ForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 64, (24,), generator=gen), "labels": torch.randint(1, 64, (12,), generator=gen)}
            for _ in range(8)]  # one batch, seen again every step: the loss must fall
    args = transformers.Seq2SeqTrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8,
                                                 report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
                                                 logging_steps=1, learning_rate=3e-3)
    trainer = EffSeq2SeqTrainer(model=model, args=args, train_dataset=rows, activation_compression="actnn",
                                quantization={"weight_bits": 8, "act_bits": 8})
    out = trainer.train()
    assert isinstance(trainer, transformers.Seq2SeqTrainer) and out.training_loss > 0
    assert quantized_layers(model) and trainer.activation_callback.engine.last_report.ratio > 2
    assert any("act_saved_ratio" in entry for entry in trainer.state.log_history)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0]
