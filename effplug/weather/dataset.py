"""ENS-10 samples from the published files: one date's ensemble mean and spread of every variable at the
target's level (plus the location), and the ERA5 truth, normalised per variable with statistics fitted on
the training years only.

A sample is ``(x, y)``: ``x`` is ``[2·V (+3), lat, lon]`` float32, the members' mean and standard deviation of
each of the V variables (ENS-10's grid input) and optionally ``sin φ, cos φ sin λ, cos φ cos λ``; ``y`` is
``[lat, lon]``, the target normalised by its training mean and standard deviation. Files are read lazily, a
date at a time, so the 0.5° data never has to fit in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from effplug.logs import log_once
from effplug.weather import layout

log = logging.getLogger("effplug.weather")


def _open(path: Path):
    from effplug.weather.synthetic import _xarray

    xr = _xarray()
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: a target needs ENS10_<pl|sfc>_mean.nc, ENS10_<pl|sfc>_std.nc "
                                "and its ERA5 file (effplug.weather.layout); write synthetic ones with "
                                "effplug.weather.write_synthetic_ens10(root)")
    return xr.open_dataset(path)


@dataclass
class Normalization:
    """Per-channel mean and standard deviation of the inputs, and of the target, from the training years."""

    input_mean: torch.Tensor  # [channels] float64
    input_std: torch.Tensor
    target_mean: float
    target_std: float

    def state_dict(self) -> dict:
        return {"input_mean": self.input_mean.clone(), "input_std": self.input_std.clone(),
                "target_mean": torch.tensor(self.target_mean, dtype=torch.float64),
                "target_std": torch.tensor(self.target_std, dtype=torch.float64)}

    @classmethod
    def from_state(cls, state: dict) -> Normalization:
        return cls(state["input_mean"].double(), state["input_std"].double(), float(state["target_mean"]),
                   float(state["target_std"]))


class ENS10Dataset(torch.utils.data.Dataset):
    """The dates of ``years`` (inclusive ``(first, last)``) for ``target`` ("t850", "z500" or "t2m")."""

    def __init__(self, root, target: str = "t850", years: tuple[int, int] = (1998, 2015),
                 normalization: Normalization | None = None, location: bool = True):
        self.root, self.target, self.location = Path(root), layout.target(target), location
        first, last = years
        spec = self.target
        self.mean, self.std, era5 = (_open(self.root / spec.forecast_file("mean")),
                                     _open(self.root / spec.forecast_file("std")), _open(self.root / spec.era5_file))
        if spec.plev_pa is not None:
            if spec.plev_pa not in self.mean["plev"].values:
                raise ValueError(f"{self.root / spec.forecast_file('mean')} has no level {spec.plev_pa} Pa for "
                                 f"target {spec.name!r}; it holds {self.mean['plev'].values.tolist()}")
            self.mean, self.std = self.mean.sel(plev=spec.plev_pa), self.std.sel(plev=spec.plev_pa)
            era5 = era5.isel(plev=0)
        self.truth = era5[spec.era5_variable]
        window = slice(f"{first}-01-01", f"{last}-12-31")
        self.mean, self.std, self.truth = (self.mean.sel(time=window), self.std.sel(time=window),
                                           self.truth.sel(time=window))
        if self.mean.sizes["time"] == 0:
            raise ValueError(f"no ENS-10 dates in {first}-{last} under {self.root}")
        missing = [v for v in spec.variables if v not in self.mean]
        if missing:
            raise ValueError(f"{self.root / spec.forecast_file('mean')} lacks variables {missing}")
        lat = torch.as_tensor(np.radians(self.mean["lat"].values), dtype=torch.float32)[:, None]
        lon = torch.as_tensor(np.radians(self.mean["lon"].values), dtype=torch.float32)[None, :]
        self.location_channels = torch.stack([lat.sin().expand(-1, lon.shape[1]), lat.cos() * lon.sin(),
                                              lat.cos() * lon.cos()])
        self.normalization = normalization if normalization is not None else self.fit_normalization()

    @property
    def channels(self) -> int:
        return 2 * len(self.target.variables) + (3 if self.location else 0)

    @property
    def target_channels(self) -> tuple[int, int]:
        """The channels of the target variable's ensemble mean and spread (EMOS's inputs)."""
        k = self.target.variables.index(self.target.variable)
        return 2 * k, 2 * k + 1

    def __len__(self) -> int:
        return self.mean.sizes["time"]

    def _raw(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.mean.isel(time=index), self.std.isel(time=index)
        planes = []
        for v in self.target.variables:
            planes += [mean[v].values, std[v].values]
        x = torch.as_tensor(np.stack(planes, -3), dtype=torch.float64)
        return x, torch.as_tensor(self.truth.isel(time=index).values, dtype=torch.float64)

    def fit_normalization(self, chunk: int = 16) -> Normalization:
        """Mean and std per channel over every date and grid point, in float64 running sums, ``chunk`` dates
        at a time. Non-finite values (ENS-10's SST is NaN over land) are left out of the sums."""
        sums = squares = counts = None
        target_sum = target_square = target_count = 0.0
        for start in range(0, len(self), chunk):
            x, y = self._raw(slice(start, start + chunk))
            x = x.transpose(0, 1).reshape(x.shape[1], -1)
            finite = torch.isfinite(x)
            x = torch.where(finite, x, 0.0)
            sums = x.sum(1) if sums is None else sums + x.sum(1)
            squares = x.pow(2).sum(1) if squares is None else squares + x.pow(2).sum(1)
            counts = finite.sum(1) if counts is None else counts + finite.sum(1)
            y = y[torch.isfinite(y)]
            target_sum, target_square = target_sum + float(y.sum()), target_square + float(y.pow(2).sum())
            target_count += y.numel()
        empty = [self._channel_name(i) for i in range(len(counts)) if counts[i] == 0]
        if empty or target_count == 0:
            raise ValueError(f"no finite values in the training years for {empty or ['the target']}; check the files")
        mean = sums / counts
        std = (squares / counts - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-12)
        target_mean = target_sum / target_count
        target_std = max((target_square / target_count - target_mean**2), 0.0) ** 0.5
        return Normalization(mean, std, target_mean, max(target_std, 1e-12))

    def _channel_name(self, channel: int) -> str:
        return f"{self.target.variables[channel // 2]} {'mean' if channel % 2 == 0 else 'std'}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._raw(index)
        n = self.normalization
        x = ((x - n.input_mean[:, None, None]) / n.input_std[:, None, None]).float()
        missing = ~torch.isfinite(x)
        if missing.any():  # land points of SST: the training mean (0 once normalised), said once
            channels = sorted({self._channel_name(int(c)) for c in missing.nonzero()[:, 0].unique()})
            log_once(log, f"ens10-nonfinite:{channels}", "effplug.weather: non-finite inputs in %s (e.g. SST over "
                     "land) are set to the training mean", ", ".join(channels))
            x = torch.where(missing, 0.0, x)
        if self.location:
            x = torch.cat([x, self.location_channels], 0)
        return x, ((y - n.target_mean) / n.target_std).float()
