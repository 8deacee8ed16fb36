"""One rank of the ZeRO door test: Lightning zero1/2/3, zero3_offload and fsdp2 against DDP, measured model
states, checkpoint save/resume/conversion, composition with effplug callbacks, and the HF Trainer door.

Launched twice by ``tests/test_zero_doors.py`` with LOCAL_RANK/RANK/WORLD_SIZE set (like torchrun).
Writes ``<out>/rank<r>.json``.
"""

from pathlib import Path

import torch
from door_worker import run_phases

STEPS = 20


def lightning_phase(out: Path, rank: int) -> dict:
    import pytorch_lightning as pl

    import effplug.strategies  # noqa: F401  (registers zero1, ..., fsdp2)
    from effplug import data
    from effplug.lit_modules import ClassifierModule, ModelStateCallback
    from effplug.parallel.zero import plain_state_dict

    split = data.digits()
    # 640 samples = 20 steps per epoch on 2 ranks x 16: the checkpoint at step 20 is an epoch boundary, so a
    # resumed run sees the same batches as an uninterrupted one
    dataset = torch.utils.data.TensorDataset(split.train_x[:640].flatten(1), split.train_y[:640])
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False)

    def module():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                  torch.nn.ReLU(), torch.nn.Linear(128, 10))
        return ClassifierModule(net, lr=1e-3)

    class Record(ModelStateCallback):
        """Losses per step, model states, and a checkpoint saved inside fit at ``save_at``."""

        def __init__(self, save_at=None, save_to=None):
            super().__init__(at_step=2)
            self.losses, self.save_at, self.save_to = [], save_at, save_to

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))
            if self.save_at == trainer.global_step:  # inside fit, as ModelCheckpoint would
                trainer.save_checkpoint(self.save_to)
            for callback in trainer.callbacks:  # composition run: the activation engine's last step
                if getattr(callback, "engine", None) is not None and hasattr(callback.engine, "last_report"):
                    self.compression_ratio = callback.engine.last_report.ratio

    def trainer(strategy, max_steps, callbacks=()):
        return pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=max_steps, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=list(callbacks), default_root_dir=str(out), use_distributed_sampler=True)

    from effplug.strategies import ZeroStrategy

    result = {"num_params": sum(p.numel() for p in module().parameters())}
    strategies = {"ddp": "ddp", "zero1": "zero1", "zero2": "zero2",
                  "zero3": ZeroStrategy(stage=3, param_persistence_threshold=0),
                  "zero3_offload": ZeroStrategy(stage=3, offload="all", param_persistence_threshold=0),
                  # DeepSpeed's default threshold (1e5 elements): every parameter of this model stays gathered
                  "zero3_persist": ZeroStrategy(stage=3),
                  "fsdp2": "fsdp2"}
    ckpt = out / "zero2.ckpt"
    for name, strategy in strategies.items():
        record = Record(save_at=STEPS, save_to=ckpt) if name == "zero2" else Record()
        run = trainer(strategy, STEPS, [record])
        run.fit(module(), loader)
        result[name] = {"losses": record.losses, "states": record.states, "peak_grad": record.peak_grad_bytes,
                        "strategy": type(run.strategy).__name__}
        if name == "zero2":  # checkpoint: a ZeRO folder, resumed, then converted to a plain state dict
            final = {k: v.detach().clone() for k, v in run.lightning_module.state_dict().items()}
            if rank == 0:
                plain = plain_state_dict(str(ckpt))
                result["plain_keys_match"] = sorted(k.removeprefix("model.") for k in plain) == \
                    sorted(k.removeprefix("model.") for k in final)
                result["plain_equal"] = all(torch.equal(plain[k], final[k]) for k in final if k in plain)
                # every file of the folder, optimizer shards included, loads with weights_only=True
                from effplug.parallel.zero import load_zero_file

                files = sorted(ckpt.rglob("*.pt"))
                result["weights_only_files"] = [f.name for f in files if load_zero_file(str(f)) is not None]
                result["weights_only_registered"] = all(
                    torch.load(f, weights_only=True) is not None for f in files)  # the strategy registered them
            resume = Record()
            resumed = trainer("zero2", STEPS + 5, [resume])
            resumed.fit(module(), loader, ckpt_path=str(ckpt))
            result["resumed_steps"] = len(resume.losses)
            result["resumed_global_step"] = resumed.global_step
            continued = Record()
            trainer("zero2", STEPS + 5, [continued]).fit(module(), loader)
            result["resume_losses"] = resume.losses
            result["continued_losses"] = continued.losses[STEPS:]
    # composition with the other effplug doors under ZeRO-2
    from effplug.callbacks import ActivationCompression, QuantizationAwareTraining

    compression = ActivationCompression(method="actnn", bits=4, seed=0)
    combo = Record()
    trainer("zero2", 5, [QuantizationAwareTraining(weight_bits=4, act_bits=8), compression, combo]).fit(module(), loader)
    result["combo_quantized"] = True
    result["combo_losses"] = combo.losses
    result["combo_ratio"] = combo.compression_ratio
    return result


def hf_phase(out: Path, rank: int) -> dict:
    import transformers

    from effplug.models import tiny_gpt2
    from effplug.parallel.zero import deepspeed_config

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (64, 17), generator=gen)
    rows = [{"input_ids": r[:-1], "labels": r[:-1]} for r in ids]
    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=40, n_positions=16)
    args = transformers.TrainingArguments(
        output_dir=str(out / "hf"), per_device_train_batch_size=4, learning_rate=3e-3, report_to=[], use_cpu=True,
        ddp_backend="gloo", disable_tqdm=True, save_strategy="no", max_steps=4, logging_steps=100,
        deepspeed=deepspeed_config(3, device="cpu", param_persistence_threshold=0))
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    output = trainer.train()
    return {"hf_engine": type(trainer.model_wrapped).__name__, "hf_loss": output.training_loss,
            "hf_stage": trainer.model_wrapped.zero_optimization_stage()}


def main() -> None:
    run_phases(lightning_phase, hf_phase)


if __name__ == "__main__":
    main()
