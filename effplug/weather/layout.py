"""The ENS-10 file layout (Ashkboos et al., NeurIPS 2022; spcl/ens10's preprocessed netCDF files), named once.

- ``ENS10_pl_mean.nc`` / ``ENS10_pl_std.nc``: the 10 members' mean and standard deviation of the 48 h
  forecast, variables Z T Q W D U V on dims (time, plev, lat, lon), plev in Pa over 11 levels;
- ``ENS10_sfc_mean.nc`` / ``ENS10_sfc_std.nc``: the 11 surface variables on (time, lat, lon);
- ``ERA5_t850.nc`` (T on a one-level plev), ``ERA5_z500.nc`` (Z) and ``ERA5_sfc_t2m.nc`` (T2M): the
  reanalysis the forecasts are corrected towards, at the forecasts' valid times.

Dates are two per week (the Mondays and Thursdays of the 2018 model cycle's calendar) for 1998-2017, on a
0.5° grid (361 x 720). The benchmark split is training 1998-2015 and test 2016-2017.
"""

from __future__ import annotations

from dataclasses import dataclass

PRESSURE_LEVELS_HPA = (10, 50, 100, 200, 300, 400, 500, 700, 850, 925, 1000)
PRESSURE_VARIABLES = ("Z", "T", "Q", "W", "D", "U", "V")
SURFACE_VARIABLES = ("SSTK", "TCW", "TCWV", "CP", "MSL", "TCC", "U10M", "V10M", "T2M", "TP", "SKT")
YEARS = tuple(range(1998, 2018))
GRID = (361, 720)
MEMBERS = 10


@dataclass(frozen=True)
class Target:
    """One of the three prediction targets: where its inputs and its ERA5 truth live."""

    name: str
    level_type: str  # "pl" or "sfc"
    variable: str  # the forecast variable that is corrected
    plev_pa: int | None  # the pressure level of the inputs, None at the surface
    era5_file: str
    era5_variable: str
    units: str

    @property
    def variables(self) -> tuple[str, ...]:
        return PRESSURE_VARIABLES if self.level_type == "pl" else SURFACE_VARIABLES

    def forecast_file(self, statistic: str) -> str:
        return f"ENS10_{self.level_type}_{statistic}.nc"


TARGETS = {
    "t850": Target("t850", "pl", "T", 85000, "ERA5_t850.nc", "T", "K"),
    "z500": Target("z500", "pl", "Z", 50000, "ERA5_z500.nc", "Z", "m²/s²"),
    "t2m": Target("t2m", "sfc", "T2M", None, "ERA5_sfc_t2m.nc", "T2M", "K"),
}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"target={name!r}: ENS-10's targets are {', '.join(map(repr, TARGETS))}")
    return TARGETS[name]
