"""One rank of the gradient-compression door test: Lightning ``ddp_*`` strategies and the HF callback.

Launched twice by ``tests/test_comm_doors.py`` with LOCAL_RANK/RANK/WORLD_SIZE set (Lightning and HF both take
an externally launched process group, like torchrun), so each framework is imported once per rank.
Writes ``<out>/rank<r>.json``.
"""

from pathlib import Path

import torch
from door_worker import run_phases


def _state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            if not isinstance(y, dict) or not _state_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x.cpu(), y.cpu()):
                return False
        elif x != y:
            return False
    return True


def lightning_phase(out: Path, rank: int) -> dict:
    import pytorch_lightning as pl

    import effplug.strategies  # noqa: F401  (registers ddp_topk, ...)
    from effplug import data
    from effplug.lit_modules import ClassifierModule
    from effplug.strategies import CompressedDDPStrategy

    split = data.digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.train_x.flatten(1), split.train_y),
                                         batch_size=32, shuffle=True)

    def module():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        return ClassifierModule(net, lr=1e-2)

    def trainer(strategy, max_steps, callbacks=()):
        return pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=max_steps, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=list(callbacks), default_root_dir=str(out))

    result = {}
    first = trainer("ddp_topk", 6)
    first.fit(module(), loader)
    ckpt = out / "topk.ckpt"
    first.save_checkpoint(ckpt)
    saved_state = first.strategy.compressor.state_dict()
    result["topk_steps"] = first.strategy.compressor.meter.steps
    result["topk_ratio"] = first.strategy.compressor.meter.ratio
    result["strategy_class"] = type(first.strategy).__name__
    if rank == 0:
        stored = torch.load(ckpt, weights_only=True)["effplug_comm"]
        result["ckpt_world_size"] = stored["world_size"]
        result["ckpt_has_both_ranks"] = len(stored["ranks"]) == 2 and all(s["residuals"] for s in stored["ranks"])

    class CheckRestored(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            result["restored_equal"] = _state_equal(trainer.strategy.compressor.state_dict(), saved_state)
            result["restored_nonempty"] = bool(saved_state["residuals"])

    resumed = trainer("ddp_topk", 9, [CheckRestored()])
    resumed.fit(module(), loader, ckpt_path=str(ckpt))
    result["resumed_steps"] = resumed.strategy.compressor.meter.steps
    # a class instance with options, and the other names, on CPU
    for name, strategy in {"cgx": CompressedDDPStrategy("cgx", bits=8, seed=1), "natural": "ddp_natural",
                           "dither": "ddp_dither", "powersgd": CompressedDDPStrategy("powersgd", rank=1, start_iter=2)}.items():
        run = trainer(strategy, 3)
        run.fit(module(), loader)
        result[f"{name}_steps"] = run.strategy.compressor.meter.steps
        result[f"{name}_ratio"] = run.strategy.compressor.meter.ratio
    return result


def hf_phase(out: Path, rank: int) -> dict:
    import transformers

    from effplug.hf import EffTrainer
    from effplug.models import tiny_gpt2

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (64, 17), generator=gen)
    rows = [{"input_ids": r[:-1], "labels": r[1:]} for r in ids]  # GPT-2 shifts labels itself; any target works

    def args(max_steps):
        return transformers.TrainingArguments(
            output_dir=str(out / "hf"), per_device_train_batch_size=4, learning_rate=3e-3, report_to=[],
            use_cpu=True, ddp_backend="gloo", disable_tqdm=True, save_strategy="steps", save_steps=3,
            max_steps=max_steps, logging_steps=100)

    def model():
        torch.manual_seed(0)
        return tiny_gpt2(vocab_size=40, n_positions=16)

    result = {}
    trainer = EffTrainer(model=model(), args=args(3), train_dataset=rows, comm={"compressor": "topk", "ratio": 0.05})
    trainer.train()
    compressor = trainer.comm_callback.compressor
    result["hf_steps"] = compressor.meter.steps
    result["hf_ratio"] = compressor.meter.ratio
    result["hf_wrapped"] = type(trainer.model_wrapped).__name__
    saved = compressor.state_dict()
    result["hf_state_file"] = (out / "hf" / "checkpoint-3" / f"effplug_comm_rank{rank}.pt").exists()
    resumed = EffTrainer(model=model(), args=args(4), train_dataset=rows, comm={"compressor": "topk", "ratio": 0.05})

    class CheckRestored(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            result["hf_restored_equal"] = _state_equal(resumed.comm_callback.compressor.state_dict(), saved)

    resumed.add_callback(CheckRestored())  # runs after the compression callback, which loads the state
    resumed.train(resume_from_checkpoint=str(out / "hf" / "checkpoint-3"))
    result["hf_resumed_steps"] = resumed.comm_callback.compressor.meter.steps
    return result


def main() -> None:
    run_phases(lightning_phase, hf_phase)


if __name__ == "__main__":
    main()
