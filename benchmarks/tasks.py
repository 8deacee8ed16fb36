"""The embedded benchmark tasks, shared by every script in ``benchmarks/``.

Each builder returns ``(model, optimizer, batches, loss_fn, evaluate, metric)``. ``prepare(model)`` runs
before the optimizer is built (QAT conversion, binarization), so parameters it adds are optimized.
``data_seed`` (default: ``seed``) drives the batch order, e.g. a different stream per data-parallel rank.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from effplug import data, models


def progress(iterable, total: int | None = None, desc: str = ""):
    """A tqdm bar on a terminal (stderr); plain iteration in logs and CI, or without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, disable=not sys.stderr.isatty())


def digits_task(seed: int, device, model_class=models.DigitsResNet, prepare=None, lr: float = 3e-3,
                data_seed: int | None = None, **model_kw):
    split = data.digits()
    torch.manual_seed(seed)
    model = model_class(width=model_kw.pop("width", 32), **model_kw).to(device)
    if prepare is not None:
        model = prepare(model) or model
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_x, train_y = split.train_x.to(device), split.train_y.to(device)

    def batches(steps, batch=64):
        gen = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
        for _ in progress(range(steps), desc=f"digits seed {seed}"):
            idx = torch.randint(0, len(train_x), (batch,), generator=gen).to(device)
            yield train_x[idx], train_y[idx]

    def loss_fn(x, y):
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate():
        was_training = model.training
        model.eval()
        acc = (model(split.test_x.to(device)).argmax(-1) == split.test_y.to(device)).float().mean().item()
        model.train(was_training)
        return acc

    return model, opt, batches, loss_fn, evaluate, "accuracy"


def char_lm_task(seed: int, device, checkpointed: bool = False, prepare=None, block: int = 64, lr: float = 3e-3,
                 data_seed: int | None = None):
    corpus = data.stdlib_text(max_chars=1_000_000)
    train_x, train_y = corpus.windows("train", block, 8192, seed=0)
    val_x, val_y = corpus.windows("val", block, 256, seed=1)
    torch.manual_seed(seed)
    model = models.tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=block, n_embd=64, n_layer=2, n_head=4).to(device)
    if checkpointed:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if prepare is not None:
        model = prepare(model) or model
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def batches(steps, batch=32):
        gen = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
        for _ in progress(range(steps), desc=f"char-gpt2 seed {seed}"):
            idx = torch.randint(0, len(train_x), (batch,), generator=gen)
            yield train_x[idx].to(device), train_y[idx].to(device)

    def loss_fn(x, y):  # the loss is computed outside the model
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    @torch.no_grad()
    def evaluate():
        was_training = model.training
        model.eval()
        loss = sum(loss_fn(val_x[i : i + 64].to(device), val_y[i : i + 64].to(device)).item() for i in range(0, 256, 64)) / 4
        model.train(was_training)
        return loss

    return model, opt, batches, loss_fn, evaluate, "val loss"


def add_grid_arguments(parser, task_names, steps: int, json_path: str, configs=None) -> None:
    """The options of every task-grid benchmark: --tasks, --configs (if given), --seeds, --steps, --quick, --json."""
    parser.add_argument("--tasks", nargs="+", default=list(task_names), choices=list(task_names))
    if configs is not None:
        parser.add_argument("--configs", nargs="+", default=list(configs), choices=list(configs))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 for digits, 0 for char-gpt2")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--quick", action="store_true", help="20 steps, one seed")
    parser.add_argument("--json", default=json_path)


def grid_steps(args) -> int:
    """Training steps per run: 20 under --quick, else --steps."""
    return 20 if args.quick else args.steps


def default_seeds(args, task: str) -> list:
    """``--seeds`` if given; else one seed for ``--quick`` and for the transformer, three for digits."""
    return args.seeds or ([0] if args.quick or task != "digits" else [0, 1, 2])


def write_report(path: str, rows: list, steps: int, device, **extra) -> None:
    """The benchmark JSON (``effplug.profile.write_report``) with the step count and device."""
    from effplug.profile import write_report as write

    write(path, rows, steps=steps, device=device, **extra)
