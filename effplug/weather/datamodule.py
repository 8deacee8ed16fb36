"""Lightning doors for ENS-10: ``ENS10DataModule`` (the files, split by years, normalised on the training
years, the normalisation kept in the checkpoint) and ``CRPSRegressionModule`` (any baseline trained on the
Gaussian CRPS, with the validation CRPS logged in the target's physical units)."""

from __future__ import annotations

import torch

from effplug._optional import require
from effplug.weather.crps import crps_gaussian
from effplug.weather.dataset import ENS10Dataset, Normalization

pl = require("pytorch_lightning", extra="lightning")


class ENS10DataModule(pl.LightningDataModule):
    """``ENS10DataModule(root, target="t850")``; years are inclusive ``(first, last)``. The paper trains on
    1998-2015 and tests on 2016-2017; the default keeps 2015 out of training for validation."""

    def __init__(self, root, target: str = "t850", batch_size: int = 4, train_years=(1998, 2014),
                 val_years=(2015, 2015), test_years=(2016, 2017), location: bool = True, num_workers: int = 0):
        super().__init__()
        for name, years in (("train_years", train_years), ("val_years", val_years), ("test_years", test_years)):
            if len(years) != 2 or years[0] > years[1]:
                raise ValueError(f"{name}={years!r}: give an inclusive (first, last) year range")
        self.root, self.target, self.batch_size, self.location = root, target, batch_size, location
        self.years = {"train": tuple(train_years), "val": tuple(val_years), "test": tuple(test_years)}
        self.num_workers = num_workers
        self.normalization: Normalization | None = None
        self.datasets: dict[str, ENS10Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if "train" not in self.datasets:
            train = ENS10Dataset(self.root, self.target, self.years["train"], self.normalization, self.location)
            self.normalization = train.normalization
            self.datasets["train"] = train
        for split in ("val", "test"):
            if split not in self.datasets:
                self.datasets[split] = ENS10Dataset(self.root, self.target, self.years[split], self.normalization,
                                                    self.location)

    @property
    def dataset(self) -> ENS10Dataset:
        if "train" not in self.datasets:
            self.setup()
        return self.datasets["train"]

    def _loader(self, split: str, shuffle: bool):
        self.setup()
        return torch.utils.data.DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                                           num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def state_dict(self) -> dict:
        return self.normalization.state_dict() if self.normalization is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.normalization = Normalization.from_state(state)
            self.datasets = {}  # rebuilt with the checkpoint's statistics


class CRPSRegressionModule(pl.LightningModule):
    """Trains ``model`` (returning ``(mu, sigma)``) on the mean Gaussian CRPS of the normalised target; logs
    ``val_crps`` and ``test_crps`` in physical units (the CRPS scales with the target's std)."""

    def __init__(self, model: torch.nn.Module, lr: float = 1e-3, target_std: float = 1.0):
        super().__init__()
        self.model, self.lr, self.target_std = model, lr, target_std

    def forward(self, x):
        return self.model(x)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, ENS10DataModule):
            self.target_std = datamodule.dataset.normalization.target_std

    def compute_loss(self, batch) -> torch.Tensor:
        x, y = batch
        mu, sigma = self.model(x)
        return crps_gaussian(mu, sigma, y).mean()

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train_crps", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_crps", self.compute_loss(batch) * self.target_std, prog_bar=True)

    def test_step(self, batch, batch_idx):
        self.log("test_crps", self.compute_loss(batch) * self.target_std)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)
