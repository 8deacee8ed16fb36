"""ENS-10 (Ashkboos et al., NeurIPS 2022 Datasets and Benchmarks): ensemble post-processing of 48 h forecasts
against ERA5, scored with CRPS. The files' layout, a synthetic writer of the same layout, the dataset and its
normalisation, the EMOS / MLP / U-Net baselines and the scores. xarray and h5netcdf come with
``pip install 'effplug[weather]'``; ``ENS10DataModule`` and ``CRPSRegressionModule`` need Lightning."""

from effplug.weather.baselines import EMOS, PointMLP, UNet
from effplug.weather.crps import CRPSGaussianLoss, crps_ensemble, crps_gaussian, ee_crps, extreme_forecast_index
from effplug.weather.dataset import ENS10Dataset, Normalization
from effplug.weather.layout import TARGETS
from effplug.weather.synthetic import ens10_dates, write_synthetic_ens10

__all__ = ["EMOS", "TARGETS", "CRPSGaussianLoss", "CRPSRegressionModule", "ENS10DataModule", "ENS10Dataset",
           "Normalization", "PointMLP", "UNet", "crps_ensemble", "crps_gaussian", "ee_crps", "ens10_dates",
           "extreme_forecast_index", "write_synthetic_ens10"]


def __getattr__(name):  # the Lightning doors import pytorch_lightning only when asked for
    if name in ("ENS10DataModule", "CRPSRegressionModule"):
        from effplug.weather import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'effplug.weather' has no attribute {name!r}")
