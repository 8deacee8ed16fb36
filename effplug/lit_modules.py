"""Plain LightningModules for the embedded tasks, shared by the demo, recipes, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from effplug._optional import require

pl = require("pytorch_lightning", extra="lightning")


class ClassifierModule(pl.LightningModule):
    """Cross-entropy classifier over ``(x, y)`` batches; ``evaluate`` returns accuracy."""

    def __init__(self, model: nn.Module, lr: float = 3e-3):
        super().__init__()
        self.model, self.lr = model, lr

    def forward(self, x):
        return self.model(x)

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
        was_training = self.training
        self.eval()
        correct = sum(
            (self.model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum().item()
            for i in range(0, len(x), batch_size)
        )
        self.train(was_training)
        return correct / len(x)


class CausalLMModule(pl.LightningModule):
    """Next-token cross-entropy over ``(input_ids, targets)`` batches for an HF causal LM.

    The loss is computed here, outside the model's forward, so plugins that act on the model's forward
    (compressed activations) never touch the loss computation.
    """

    def __init__(self, model: nn.Module, lr: float = 3e-3):
        super().__init__()
        self.model, self.lr = model, lr

    def loss(self, input_ids, targets):
        logits = self.model(input_ids=input_ids).logits
        return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    def compute_loss(self, batch):
        return self.loss(*batch)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> float:
        """Mean validation loss (nats per character)."""
        was_training = self.training
        self.eval()
        total = sum(self.loss(x[i : i + batch_size], y[i : i + batch_size]).item() * len(x[i : i + batch_size])
                    for i in range(0, len(x), batch_size))
        self.train(was_training)
        return total / len(x)


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
