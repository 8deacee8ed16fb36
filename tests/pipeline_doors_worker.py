"""One rank of the pipeline door test: Lightning pipeline_gpipe / pipeline_1f1b / pipeline_chimera against a
one-process reference, and a checkpoint resume. Launched by tests/test_pipeline_doors.py; writes rank<r>.json."""

import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    import pytorch_lightning as pl

    import effplug.strategies  # noqa: F401  (registers pipeline_*)
    from effplug import data
    from effplug.lit_modules import ClassifierModule

    out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
    torch.set_num_threads(1)
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
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
