"""Plain LightningModules for the embedded tasks, shared by the demo, recipes, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from effplug._optional import require
from effplug.sizes import tensor_nbytes

pl = require("pytorch_lightning", extra="lightning")


class _TaskModule(pl.LightningModule):
    """Shared loop parts: ``compute_loss`` for training, ``batch_score`` summed over batches for evaluation."""

    optimizer_class = torch.optim.Adam

    def __init__(self, model: nn.Module, lr: float = 3e-3):
        super().__init__()
        self.model, self.lr = model, lr

    def compute_loss(self, batch):
        raise NotImplementedError

    def batch_score(self, x, y) -> float:
        """The evaluation metric summed over one batch."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return self.optimizer_class(self.parameters(), lr=self.lr)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
        """The metric averaged over ``x``, in eval mode, restoring the training flag afterwards."""
        was_training = self.training
        self.eval()
        total = sum(self.batch_score(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
        self.train(was_training)
        return total / len(x)


class ClassifierModule(_TaskModule):
    """Cross-entropy classifier over ``(x, y)`` batches; ``evaluate`` returns accuracy."""

    def forward(self, x):
        return self.model(x)

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def batch_score(self, x, y) -> float:
        return (self.model(x).argmax(-1) == y).sum().item()


class CausalLMModule(_TaskModule):
    """Next-token cross-entropy over ``(input_ids, targets)`` batches for an HF causal LM.

    The loss is computed here, outside the model's forward, so plugins that act on the model's forward
    (compressed activations) never touch the loss computation. ``evaluate`` returns the mean validation
    loss in nats per token.
    """

    optimizer_class = torch.optim.AdamW

    def loss(self, input_ids, targets):
        logits = self.model(input_ids=input_ids).logits
        return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    def compute_loss(self, batch):
        return self.loss(*batch)

    def batch_score(self, x, y) -> float:
        return self.loss(x, y).item() * len(x)


class StepTimeCallback(pl.Callback):
    """Median training-step wall time after warm-up, measured around each batch."""

    def __init__(self, warmup: int = 5):
        from effplug.profile import StepTimer

        self.timer = StepTimer(warmup=warmup)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.timer.device = pl_module.device
        self.timer.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.timer.stop()

    def on_train_end(self, trainer, pl_module):
        # callback_metrics travel back from spawned ranks; the timer itself stays in the child
        if self.timer.times_s:
            trainer.callback_metrics["step_ms"] = torch.tensor(self.timer.median_s * 1e3)


class CommBytesCallback(pl.Callback):
    """Report a ``CompressedDDPStrategy``'s bytes ratio in ``callback_metrics`` (they come back from spawned ranks)."""

    def on_train_end(self, trainer, pl_module):
        trainer.callback_metrics["comm_ratio"] = torch.tensor(trainer.strategy.compressor.meter.ratio)


class ModelStateCallback(pl.Callback):
    """Per-rank bytes of parameters, gradients and optimizer states (``effplug.parallel.zero.model_state_bytes``).

    ``states`` is read before the optimizer step of step ``at_step`` (Adam's moments exist from step 1 on);
    ``peak_grad_bytes`` is the most ``.grad`` storage the rank held at once during a backward (post-accumulate
    hooks), which is where stage 0/1 keep a full gradient.
    """

    def __init__(self, at_step: int = 2):
        self.at_step, self.states, self.peak_grad_bytes = at_step, None, 0

    def on_train_start(self, trainer, pl_module):
        model = trainer.strategy.model
        target = model.module if hasattr(model, "zero_optimization_stage") else pl_module
        params = list(target.parameters())

        def track(_):
            held = [p.grad for p in params if p.grad is not None]
            self.peak_grad_bytes = max(self.peak_grad_bytes, sum(tensor_nbytes(g) for g in held))

        for p in params:
            p.register_post_accumulate_grad_hook(track)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.at_step:
            from effplug.parallel.zero import model_state_bytes

            self.states = model_state_bytes(trainer.strategy.model, optimizer)
