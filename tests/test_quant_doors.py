"""QAT and binarization through their doors: real Lightning (and LightningCLI), real HF Trainer, DDP on gloo."""


import pytest
import torch

from effplug.quant import QATConfig, quantize_model, quantized_layers, set_bits

pl = pytest.importorskip("pytorch_lightning")
transformers = pytest.importorskip("transformers")


def _digits(batch_size=64, n=512, **model_kw):
    from effplug.data import digits
    from effplug.lit_modules import ClassifierModule
    from effplug.models import DigitsResNet

    split = digits()
    data = torch.utils.data.TensorDataset(split.train_x[:n], split.train_y[:n])
    return ClassifierModule(DigitsResNet(width=16, **model_kw)), torch.utils.data.DataLoader(data, batch_size=batch_size)


def _trainer(root, steps, callbacks, **kw):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root, callbacks=callbacks, **kw)


def _learned(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if n.endswith(("step", "alpha"))}


def test_lightning_qat_trains_optimizes_scales_checkpoints_and_resumes(tmp_path):
    from effplug.callbacks import QuantizationAwareTraining

    pl.seed_everything(0, verbose=False)
    module, loader = _digits()
    callback = QuantizationAwareTraining(weight_bits=4, act_bits=4, weight_estimator="lsq", act_estimator="pact")
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=4)
    trainer = _trainer(tmp_path, 4, [callback, ckpt], accumulate_grad_batches=2)
    trainer.fit(module, loader)
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in module.parameters()}  # learned scales are in the optimizer
    learned = _learned(module)
    assert len(learned) == 2 * len(quantized_layers(module))
    initial = _learned(quantize_model(_digits()[0], callback.config))
    assert any(not torch.equal(learned[n], initial[n]) for n in learned if n in initial)  # they moved

    resumed_cb = QuantizationAwareTraining(weight_bits=4, act_bits=4, weight_estimator="lsq", act_estimator="pact")
    module2, _ = _digits()
    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("learned", _learned(pl_module))

    _trainer(tmp_path, 6, [resumed_cb, Probe()], accumulate_grad_batches=2).fit(
        module2, loader, ckpt_path=str(tmp_path / "last.ckpt"))
    assert seen["learned"].keys() == learned.keys()
    assert all(torch.equal(seen["learned"][n], learned[n]) for n in learned)

    with pytest.raises(ValueError, match="trained with .*weight_bits=4.*this run has .*weight_bits=2"):
        QuantizationAwareTraining(weight_bits=2).load_state_dict(
            torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"][callback.state_key])
    # through the Trainer: a 2-bit run finds the 4-bit checkpoint's QAT state and refuses it
    mismatched = QuantizationAwareTraining(weight_bits=2, act_bits=4, weight_estimator="lsq", act_estimator="pact")
    with pytest.raises(ValueError, match="trained with .*weight_bits=4.*this run has .*weight_bits=2"):
        _trainer(tmp_path, 6, [mismatched]).fit(_digits()[0], loader, ckpt_path=str(tmp_path / "last.ckpt"))
    # flipped bytes in a learned step size are caught on load, before training resumes on them
    import zipfile

    with zipfile.ZipFile(tmp_path / "last.ckpt") as archive:
        names = archive.namelist()
    raw = bytearray((tmp_path / "last.ckpt").read_bytes())
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    step_key = next(k for k in checkpoint["state_dict"] if k.endswith("weight_quant.step"))
    target = checkpoint["state_dict"][step_key]
    needle = target.reshape(-1).view(torch.uint8).numpy().tobytes()[:8]
    at = raw.find(needle)
    assert at > 0 and names
    raw[at + 3] ^= 0x40  # one exponent bit of the first learned step
    (tmp_path / "flipped.ckpt").write_bytes(bytes(raw))
    resumed = QuantizationAwareTraining(weight_bits=4, act_bits=4, weight_estimator="lsq", act_estimator="pact")
    with pytest.raises(ValueError, match="fail their checksum"):
        _trainer(tmp_path, 6, [resumed]).fit(_digits()[0], loader, ckpt_path=str(tmp_path / "flipped.ckpt"))


def test_lightning_once_qat_runs_every_width_and_restores_training_step(tmp_path):
    from effplug.callbacks import QuantizationAwareTraining

    pl.seed_everything(0, verbose=False)
    module, loader = _digits()
    calls = []
    original = module.training_step

    def counting_step(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    module.training_step = counting_step
    callback = QuantizationAwareTraining(bit_widths=[2, 4, 8], act_bits=8, log_stats=False)
    _trainer(tmp_path, 3, [callback], precision="bf16-mixed").fit(module, loader)
    assert len(calls) == 9  # three widths per step
    assert module.training_step is counting_step  # the callback's wrapper is gone after fit
    module.eval()
    x = loader.dataset.tensors[0][:64]
    outputs = {}
    for b in (2, 4, 8):
        set_bits(module, b)
        with torch.no_grad():
            outputs[b] = module(x)
    assert not torch.equal(outputs[2], outputs[8])


def test_lightning_binarization_keeps_teacher_and_progress_across_resume(tmp_path):
    from effplug.callbacks import Binarization

    pl.seed_everything(0, verbose=False)
    module, loader = _digits(activation="hardtanh")
    callback = Binarization()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3)
    _trainer(tmp_path, 3, [callback, ckpt]).fit(module, loader)
    assert callback.engine.last_distill_loss > 0
    assert callback.engine.progress == pytest.approx(2 / 3)
    teacher = {k: v.clone() for k, v in callback.engine.teacher.state_dict().items()}
    module2, _ = _digits(activation="hardtanh")
    resumed = Binarization()
    _trainer(tmp_path, 4, [resumed]).fit(module2, loader, ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.engine.progress == pytest.approx(3 / 4)
    restored = resumed.engine.teacher.state_dict()
    assert all(torch.equal(restored[k], teacher[k]) for k in teacher)  # not module2's fresh float weights


def test_lightning_cli_accepts_both_callbacks_by_class_path(tmp_path):
    from pytorch_lightning.cli import LightningCLI

    from effplug.lit_modules import ClassifierModule

    args = [
        "--model.model.class_path=effplug.models.DigitsResNet", "--model.model.init_args.width=8",
        "--trainer.accelerator=cpu", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=effplug.callbacks.QuantizationAwareTraining",
        "--trainer.callbacks.weight_bits=3", "--trainer.callbacks.weight_estimator=lsq",
        "--trainer.callbacks+=effplug.callbacks.Binarization", "--trainer.callbacks.method=sign_ste",
    ]
    cli = LightningCLI(ClassifierModule, run=False, args=args, save_config_kwargs={"overwrite": True})
    kinds = {type(c).__name__: c for c in cli.trainer.callbacks}
    assert kinds["QuantizationAwareTraining"].config.weight_bits == 3
    assert kinds["QuantizationAwareTraining"].config.weight_estimator == "lsq"
    assert kinds["Binarization"].config.method == "sign_ste"


def _char_lm_rows(n=48, block=32):
    from effplug.data import stdlib_text

    corpus = stdlib_text(max_chars=50_000)
    x, _ = corpus.windows("train", block, n, seed=0)
    return corpus.vocab_size, [{"input_ids": a, "labels": a} for a in x]


def _hf_args(path, **kw):
    return transformers.TrainingArguments(output_dir=str(path), per_device_train_batch_size=8, learning_rate=3e-3,
                                          report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps",
                                          save_steps=2, logging_steps=1, **kw)


def test_hf_apply_quantization_callback_and_eff_trainer_once_qat(tmp_path):
    from effplug.hf import BinarizationCallback, EffTrainer, QuantizationCallback, apply_quantization
    from effplug.models import tiny_gpt2

    vocab, rows = _char_lm_rows()
    config = QATConfig(weight_bits=4, act_bits=8, weight_estimator="lsq", act_estimator="lsq")
    torch.manual_seed(0)
    model = apply_quantization(tiny_gpt2(vocab_size=vocab, n_positions=32), config)
    trainer = transformers.Trainer(model=model, args=_hf_args(tmp_path / "fn", max_steps=2), train_dataset=rows)
    trainer.train()
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters()}

    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=vocab, n_positions=32)
    trainer = transformers.Trainer(model=model, args=_hf_args(tmp_path / "cb", max_steps=2), train_dataset=rows,
                                   callbacks=[QuantizationCallback(config)])
    assert quantized_layers(model)  # converted in on_init_end, before the optimizer exists
    trainer.train()
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}

    model = tiny_gpt2(vocab_size=vocab, n_positions=32)
    eff = EffTrainer(model=model, args=_hf_args(tmp_path / "once", max_steps=2), train_dataset=rows,
                     quantization={"bit_widths": [2, 4, 8], "act_bits": 8})
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    eff.train()
    assert len(calls) == 6

    binarizer = BinarizationCallback(method="dirnet")
    model = tiny_gpt2(vocab_size=vocab, n_positions=32)
    transformers.Trainer(model=model, args=_hf_args(tmp_path / "bin", max_steps=2), train_dataset=rows,
                         callbacks=[binarizer]).train()
    assert binarizer.engine.last_distill_loss > 0 and binarizer.engine.progress == pytest.approx(0.5)
    assert (tmp_path / "bin" / "checkpoint-2" / "effplug_binarization.pt").exists()
    teacher = {k: v.clone() for k, v in binarizer.engine.teacher.state_dict().items()}
    resumed = BinarizationCallback(method="dirnet")
    model = tiny_gpt2(vocab_size=vocab, n_positions=32)  # fresh float weights: not the teacher
    transformers.Trainer(model=model, args=_hf_args(tmp_path / "bin", max_steps=3), train_dataset=rows,
                         callbacks=[resumed]).train(resume_from_checkpoint=str(tmp_path / "bin" / "checkpoint-2"))
    restored = resumed.engine.teacher.state_dict()
    assert all(torch.equal(restored[k], teacher[k]) for k in teacher)
    # resumed from a copy outside output_dir: the state is read from the folder being resumed
    import shutil

    shutil.copytree(tmp_path / "bin" / "checkpoint-2", tmp_path / "copied" / "run-a")
    elsewhere = BinarizationCallback(method="dirnet")
    model = tiny_gpt2(vocab_size=vocab, n_positions=32)
    transformers.Trainer(model=model, args=_hf_args(tmp_path / "other", max_steps=3), train_dataset=rows,
                         callbacks=[elsewhere]).train(resume_from_checkpoint=str(tmp_path / "copied" / "run-a"))
    restored = elsewhere.engine.teacher.state_dict()
    assert all(torch.equal(restored[k], teacher[k]) for k in teacher)

    with pytest.raises(ValueError, match="use effplug.hf.EffTrainer"):
        QuantizationCallback(QATConfig(bit_widths=[2, 4]))
    with pytest.raises(ValueError, match="act_bits=16"):
        EffTrainer(model=torch.nn.Linear(2, 2), quantization={"act_bits": 16})


def _ddp_worker(rank, world):
    import torch.distributed as dist

    from effplug.models import DigitsResNet

    torch.manual_seed(0)
    net = quantize_model(DigitsResNet(width=8), QATConfig(weight_bits=4, act_bits=4, weight_estimator="octav"))
    model = torch.nn.parallel.DistributedDataParallel(net)  # quantize before wrapping
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(3):
        x, y = torch.randn(16, 1, 8, 8, generator=gen) * (1 + rank), torch.randint(0, 10, (16,), generator=gen)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    state = torch.cat([b.float().flatten() for n, b in net.named_buffers() if n.endswith("clip")])
    gathered = [torch.zeros_like(state) for _ in range(world)]
    dist.all_gather(gathered, state)
    return torch.equal(gathered[0], gathered[1])


def test_ddp_ranks_keep_identical_activation_ranges():

    from effplug.launch import spawn_ranks

    results = spawn_ranks(_ddp_worker, 2)
    assert results[0] and results[1]


def test_recipes_run_end_to_end(tmp_path):
    import importlib.util
    from pathlib import Path

    def load(name):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    results = load("lightning_qat_digits").main(["--max-steps", "3", "--bit-widths", "2", "8",
                                                 "--out", str(tmp_path / "l")])
    assert set(results) == {2, 8}
    assert all(abs(fake - real) <= 0.01 for fake, real in results.values())  # export keeps the predictions
    assert (tmp_path / "l" / "export_w2.pt").exists()
    out = load("hf_qat_gpt2").main(["--max-steps", "2", "--out", str(tmp_path / "h")])
    assert out["parity"] < 1e-2 and out["eval_loss"] > 0  # float32 vs exact integer sums: rare one-code flips
    fused = load("hf_qat_gpt2").main(["--max-steps", "2", "--fused-kernels", "--out", str(tmp_path / "f")])
    assert fused["eval_loss"] == pytest.approx(out["eval_loss"], abs=1e-3)  # the fused loss trains the same


@pytest.mark.parametrize("qat_first", [True, False])
def test_qat_composes_with_activation_compression(tmp_path, qat_first):
    from effplug.callbacks import ActivationCompression, QuantizationAwareTraining

    pl.seed_everything(0, verbose=False)
    module, loader = _digits()
    qat = QuantizationAwareTraining(weight_bits=4, act_bits=4, weight_estimator="lsq", act_estimator="lsq")
    act = ActivationCompression(method="actnn", bits=4, seed=0)
    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["ratio"] = act.engine.last_report.ratio
            seen["layers"] = len(quantized_layers(pl_module))

    _trainer(tmp_path, 2, [qat, act, Probe()] if qat_first else [act, qat, Probe()]).fit(module, loader)
    assert seen["layers"] == 6 and seen["ratio"] > 3
