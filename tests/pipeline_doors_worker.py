"""One rank of the pipeline door test: Lightning pipeline_gpipe / pipeline_1f1b / pipeline_chimera against a
one-process reference, and a checkpoint resume. Launched by tests/test_pipeline_doors.py; writes rank<r>.json."""


import torch
from door_worker import run_phases


def main() -> None:
    run_phases(schedules_phase)


def schedules_phase(out, rank) -> dict:
    import pytorch_lightning as pl

    import effplug.strategies  # noqa: F401  (registers pipeline_*)
    from effplug import data
    from effplug.lit_modules import ClassifierModule

    split = data.digits()
    dataset = torch.utils.data.TensorDataset(split.train_x[:256].flatten(1), split.train_y[:256])
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                   torch.nn.Linear(64, 10))

    class SGDClassifier(ClassifierModule):  # SGD: Adam's sign-like first steps amplify 1e-7 gradient rounding
        optimizer_class = torch.optim.SGD

    reference = []
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in [*loader, *loader][:12]:  # 8 batches per epoch: 12 steps = 1.5 epochs
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reference.append(loss.item())

    class Record(pl.Callback):
        def __init__(self, save_at=None, save_to=None):
            self.losses, self.save_at, self.save_to = [], save_at, save_to

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))
            if trainer.global_step == self.save_at:
                trainer.save_checkpoint(self.save_to)

    def trainer(strategy, steps, callback):
        return pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=steps, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[callback], default_root_dir=str(out), use_distributed_sampler=False)

    result = {"reference": reference}
    for name in ("pipeline_gpipe", "pipeline_1f1b", "pipeline_chimera"):
        resumable = name in ("pipeline_1f1b", "pipeline_chimera")
        record = Record(save_at=8, save_to=out / f"{name}.ckpt") if resumable else Record()
        run = trainer(name, 12, record)
        run.fit(SGDClassifier(net(), lr=0.1), loader)
        result[name] = record.losses
        result[f"{name}_params"] = sum(p.numel() for p in run.lightning_module.parameters())
    for name in ("pipeline_1f1b", "pipeline_chimera"):
        resumed = Record()
        trainer(name, 12, resumed).fit(SGDClassifier(net(), lr=0.1), loader, ckpt_path=str(out / f"{name}.ckpt"))
        result[f"{name}_resumed"] = resumed.losses
    result.update(validation_runs(out, loader, split, net, SGDClassifier, reference_model_after=8))
    result.update(acsgd_runs(out, trainer, Record))
    result.update(llama_run(trainer, Record, SGDClassifier))
    return result


def validation_runs(out, loader, split, net, SGDClassifier, reference_model_after: int) -> dict:
    """validation_step calls self.model(x) as usual: sanity check, end of epoch 1, then trainer.validate()."""
    import pytorch_lightning as pl

    val_x, val_y = split.train_x[256:512].flatten(1), split.train_y[256:512]
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(val_x, val_y), batch_size=64)

    class Validated(SGDClassifier):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.model(x), y))

    model = net()  # the one-process reference after the same SGD steps
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in list(loader)[:reference_model_after]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(val_x), val_y).item()
    result = {"val_expected": expected}
    for name in ("pipeline_1f1b", "pipeline_chimera"):
        run = pl.Trainer(accelerator="cpu", devices=2, strategy=name, max_steps=reference_model_after, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(out), use_distributed_sampler=False)
        run.fit(Validated(net(), lr=0.1), loader, val_loader)
        result[f"{name}_val_fit"] = float(run.callback_metrics["val_loss"])
        result[f"{name}_val_validate"] = float(run.validate(run.lightning_module, val_loader, verbose=False)[0]["val_loss"])
    return result


def llama_run(trainer, Record, SGDClassifier) -> dict:
    """A tied tiny Llama through pipeline_1f1b (split_decoder) against one-process SGD, 6 steps."""
    from effplug.models import tiny_llama

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 40, (48, 17), generator=gen)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)

    def net():
        torch.manual_seed(0)
        return tiny_llama(vocab_size=40, num_hidden_layers=2, tie_word_embeddings=True)

    def lm_loss(logits, targets):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    model, reference = net(), []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in loader:
        loss = lm_loss(model(input_ids=x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reference.append(loss.item())
    record = Record()
    trainer("pipeline_1f1b", 6, record).fit(SGDClassifier(net(), lr=0.1), loader)
    return {"llama_reference": reference, "llama_pipeline": record.losses}


def acsgd_runs(out, trainer, Record) -> dict:
    """A char-LM on stdlib_text through pipeline_1f1b, plain and with AC-SGD (4-bit), 4 epochs over 1024 windows,
    then an AC-SGD resume from the end of epoch 2."""
    from effplug import data
    from effplug.lit_modules import ClassifierModule
    from effplug.parallel.pipeline.acsgd import ACSGDConfig, activation_wire_nbytes, gradient_wire_nbytes
    from effplug.strategies import PipelineStrategy

    corpus = data.stdlib_text(max_chars=200_000)
    x, y = corpus.windows("train", 16, 1024, seed=0)
    # the third element gives AC-SGD its sample ids (the digits runs above would hash the rows)
    dataset = torch.utils.data.TensorDataset(x, y[:, -1], torch.arange(1024))
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Embedding(corpus.vocab_size, 32), torch.nn.Flatten(),
                                   torch.nn.Linear(16 * 32, 128), torch.nn.GELU(),
                                   torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.Linear(128, corpus.vocab_size))

    config = ACSGDConfig(bits=4, group_size=128)
    result = {"vocab": corpus.vocab_size}
    for name, acsgd in (("plain", None), ("acsgd", config)):
        record = Record(save_at=32, save_to=out / f"{name}.ckpt")
        run = trainer(PipelineStrategy("1f1b", microbatches=4, split_points=[4], acsgd=acsgd), 64, record)
        run.fit(ClassifierModule(net(), lr=3e-3), loader)
        result[f"lm_{name}"] = record.losses
        if acsgd is not None:
            meter = run.strategy.runner.acsgd.meter
            result["acsgd_sent"], result["acsgd_dense"], result["acsgd_steps"] = \
                meter.sent_bytes, meter.dense_bytes, meter.steps
            numel = 16 * 128  # one micro-batch of 16 rows x 128 features crosses the boundary
            result["acsgd_formula"] = {"activation": activation_wire_nbytes(numel, 4, 128),
                                       "gradient": gradient_wire_nbytes(numel, 8, 128), "dense": numel * 4}
    resumed = Record()
    trainer(PipelineStrategy("1f1b", microbatches=4, split_points=[4], acsgd=config), 64, resumed).fit(
        ClassifierModule(net(), lr=3e-3), loader, ckpt_path=str(out / "acsgd.ckpt"))
    result["lm_acsgd_resumed"] = resumed.losses
    return result


if __name__ == "__main__":
    main()
