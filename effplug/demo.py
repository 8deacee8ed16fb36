"""``effplug demo``: train the embedded tasks in a real Lightning Trainer and print one table.

Rows come from two small registries: tasks (what to train) and configurations (what effplug adds).
Each family registers its own rows with ``register_demo_config`` in its ``demo_rows`` module
(``effplug/compress``, ``effplug/quant``, ``effplug/comm``), loaded in ``FAMILY_ROWS`` order at the end of
this module; nobody edits this loop.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from effplug import data, models
from effplug.profile import saved_bytes


@dataclass(frozen=True)
class DemoTask:
    name: str
    metric: str  # "accuracy" or "val loss"
    build: Callable  # (quick: bool) -> (module, train_loader, eval_x, eval_y, max_steps)


@dataclass(frozen=True)
class DemoConfig:
    """A configuration row: Lightning callbacks/plugins/strategy to add, built fresh per task."""

    name: str
    trainer_kwargs: Callable[[], dict] = field(default=dict)
    tasks: tuple = ()  # empty: every task
    # Saved-activation bytes for one batch; None uses the exact saved-tensor meter on a plain forward+loss.
    measure_saved_bytes: Callable | None = None
    devices: int = 1  # > 1: that many CPU processes (gloo), spawned by the strategy
    baseline: bool = False  # step-time ratios of rows with the same ``devices`` are relative to this row


DEMO_TASKS: dict[str, DemoTask] = {}
DEMO_CONFIGS: dict[str, DemoConfig] = {}


def register_demo_task(task: DemoTask) -> DemoTask:
    DEMO_TASKS[task.name] = task
    return task


def register_demo_config(config: DemoConfig) -> DemoConfig:
    """Add (or replace, idempotently) a configuration row for ``effplug demo``."""
    DEMO_CONFIGS[config.name] = config
    return config


def _loader(x, y, batch_size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=True, generator=gen
    )


def _build_digits(quick: bool):
    from effplug.lit_modules import ClassifierModule

    split = data.digits()
    module = ClassifierModule(models.DigitsResNet(width=32), lr=3e-3)
    return module, _loader(split.train_x, split.train_y, 64), split.test_x, split.test_y, 30 if quick else 400


def _build_char_lm(quick: bool):
    from effplug.lit_modules import CausalLMModule

    corpus = data.stdlib_text(max_chars=200_000 if quick else 1_000_000)
    block = 64
    train_x, train_y = corpus.windows("train", block, 4096 if not quick else 512, seed=0)
    val_x, val_y = corpus.windows("val", block, 256 if not quick else 64, seed=1)
    model = models.tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=block, n_embd=64, n_layer=2, n_head=4)
    return CausalLMModule(model, lr=3e-3), _loader(train_x, train_y, 32), val_x, val_y, 30 if quick else 400


register_demo_task(DemoTask("digits-resnet", "accuracy", _build_digits))
register_demo_task(DemoTask("char-gpt2", "val loss", _build_char_lm))
register_demo_config(DemoConfig("fp32 baseline", baseline=True))


def _default_saved_bytes(module, batch) -> int:
    module.train()
    return saved_bytes(lambda: module.compute_loss(batch), parameters=module).activation_bytes


def run_task_config(task: DemoTask, config: DemoConfig, quick: bool, seed: int = 0, progress: bool = True) -> dict:
    import pytorch_lightning as pl

    from effplug.lit_modules import StepTimeCallback

    pl.seed_everything(seed, verbose=False)
    module, loader, eval_x, eval_y, max_steps = task.build(quick)
    if config.devices > 1:
        # spawned ranks cannot unpickle a torch.Generator; DDP's DistributedSampler shuffles (seeded) instead
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True,
                                             drop_last=loader.drop_last)
    extra = config.trainer_kwargs()
    timer = StepTimeCallback(warmup=5 if not quick else 2)
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=-(-max_steps // len(loader)),  # so the progress bar shows "Epoch i/N"
        accelerator="auto" if config.devices == 1 else "cpu",
        devices=config.devices,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **{k: v for k, v in extra.items() if k != "callbacks"},
        callbacks=[timer, *extra.get("callbacks", [])],
    )
    start = time.perf_counter()
    if config.devices > 1:
        from effplug.launch import free_port

        # Lightning's own pick is an ephemeral port, which a concurrent gloo connection can take first
        previous = os.environ.get("MASTER_PORT")
        os.environ["MASTER_PORT"] = str(free_port())
        try:
            trainer.fit(module, loader)
        finally:
            if previous is None:
                os.environ.pop("MASTER_PORT", None)
            else:
                os.environ["MASTER_PORT"] = previous
    else:
        trainer.fit(module, loader)
    wall = time.perf_counter() - start
    batch = next(iter(loader))
    batch = [t.to(module.device) for t in batch]
    measure = config.measure_saved_bytes or _default_saved_bytes
    metrics = trainer.callback_metrics
    row = {
        "task": task.name,
        "config": config.name,
        "metric": task.metric,
        "value": module.evaluate(eval_x.to(module.device), eval_y.to(module.device)),
        "saved_mb": measure(module, batch) / 2**20,
        "step_ms": float(metrics["step_ms"]) if "step_ms" in metrics else timer.timer.median_s * 1e3,
        "steps": max_steps,
        "wall_s": wall,
        "devices": config.devices,
    }
    if "comm_ratio" in metrics:
        row["comm_ratio"] = float(metrics["comm_ratio"])
    return row


def run_demo(quick: bool = False, configs: list | None = None, tasks: list | None = None, progress: bool = True) -> list:
    rows = []
    for task in DEMO_TASKS.values():
        if tasks and task.name not in tasks:
            continue
        baseline_ms = {}  # per process count: 2-process rows compare with the dense 2-process row
        wanted = [c for c in DEMO_CONFIGS.values() if not configs or c.name in configs]
        for config in DEMO_CONFIGS.values():
            keep_as_baseline = config.baseline and any(c.devices == config.devices for c in wanted)
            if configs and config.name not in configs and not keep_as_baseline:
                continue
            if config.tasks and task.name not in config.tasks:
                continue
            row = run_task_config(task, config, quick, progress=progress)
            baseline_ms.setdefault(config.devices, row["step_ms"])
            row["step_ratio"] = row["step_ms"] / baseline_ms[config.devices]
            rows.append(row)
    return rows


def format_table(rows: list) -> str:
    lines = [
        "| task | configuration | accuracy / val loss | saved-activation MB | step-time ratio | gradient bytes vs dense |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        metric = f"{r['value']:.3f} ({r['metric']})"
        comm = "-" if "comm_ratio" not in r else "1.0x (dense)" if r["comm_ratio"] < 1.0001 else f"{r['comm_ratio']:.1f}x fewer"
        lines.append(f"| {r['task']} | {r['config']} | {metric} | {r['saved_mb']:.2f} | {r['step_ratio']:.2f} | {comm} |")
    return "\n".join(lines)


def write_json(rows: list, path: str, argv: list) -> None:
    from effplug.profile import write_report

    write_report(path, rows, argv=argv)


# Each family's rows, in table order (imported here, after the registries exist).
FAMILY_ROWS = ("effplug.compress.demo_rows", "effplug.quant.demo_rows", "effplug.comm.demo_rows",
               "effplug.fused.demo_rows")
for _module in FAMILY_ROWS:
    importlib.import_module(_module)
