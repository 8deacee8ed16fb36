"""Synthetic ENS-10 files: the published layout (:mod:`effplug.weather.layout`) with smaller grids and fewer
dates, for tests and benchmarks, since the real data cannot be downloaded here.

For every variable and level, the truth (written as ERA5 for the targets) is a latitude profile plus a
seasonal cycle plus smooth random anomalies, scaled to the variable's typical range. Each date's ensemble
is drawn as ``truth + bias + e + s·z_m`` for 10 members:
- ``bias`` is systematic: it depends on latitude and on the humidity anomaly at the same level, so a
  post-processor that sees location and the other variables can remove it and a global linear model cannot;
- ``e ~ N(0, (1.5 s)²)`` is the error common to all members, so the ensemble is under-dispersive by 1.5x;
- ``s`` is the member spread, varying in space, so the member spread is informative about the error.
The mean and standard deviation over the members are what the files hold, as the published ones do. As in
the published files, SST is NaN over "land" (a fixed random mask).
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from effplug.weather import layout

# typical (low, high) of each variable: temperatures in K, geopotential in m²/s², the rest in their units
_RANGES = {("T", 850): (240.0, 299.0), ("Z", 850): (10000.0, 15500.0), ("T", 500): (230.0, 269.0),
           ("Z", 500): (48200.0, 58000.0), "Q": (0.0, 1.5e-2), "W": (-1.2, 1.8), "D": (-1.9e-4, 1.6e-4),
           "U": (-16.0, 27.0), "V": (-10.0, 16.0), "T": (200.0, 300.0), "Z": (0.0, 3e5), "SSTK": (260.0, 305.0),
           "TCW": (0.0, 60.0), "TCWV": (0.0, 60.0), "CP": (0.0, 0.04), "MSL": (97000.0, 1.1e5), "TCC": (0.0, 1.0),
           "U10M": (-13.0, 11.0), "V10M": (-10.0, 15.0), "T2M": (218.0, 304.0), "TP": (0.0, 0.07),
           "SKT": (210.0, 310.0)}


def ens10_dates(years=layout.YEARS, dates_per_year: int | None = None) -> list[date]:
    """The Mondays and Thursdays of 2018's calendar, in each year; ``dates_per_year`` keeps evenly spaced ones."""
    calendar = [date(2018, 1, 1) + timedelta(days=d) for d in range(365)]
    month_days = [(d.month, d.day) for d in calendar if d.weekday() in (0, 3)]
    if dates_per_year is not None:
        step = len(month_days) / dates_per_year
        month_days = [month_days[int(i * step)] for i in range(dates_per_year)]
    return [date(y, m, d) for y in years for m, d in month_days]


def _smooth_anomaly(rng, lat, lon, modes: int = 6) -> np.ndarray:
    field = np.zeros((len(lat), len(lon)))
    for _ in range(modes):
        k, l_ = rng.integers(1, 5), rng.integers(1, 4)
        phase, amp = rng.uniform(0, 2 * math.pi, 2), rng.normal()
        field += amp * np.outer(np.cos(l_ * np.radians(lat) + phase[0]), np.cos(k * np.radians(lon) + phase[1]))
    return field / math.sqrt(modes / 4)


def write_synthetic_ens10(root, years=(2014, 2015, 2016, 2017), dates_per_year: int = 8, grid=(16, 32),
                          levels_hpa=(500, 850), members: int = layout.MEMBERS, seed: int = 0) -> Path:
    """Write the seven ENS-10 files under ``root`` (created) and return it. ``levels_hpa`` are the pressure
    levels written (the targets need 500 and 850; the real files hold all 11)."""
    xr = _xarray()
    unknown = sorted(set(levels_hpa) - set(layout.PRESSURE_LEVELS_HPA))
    if unknown:
        raise ValueError(f"levels_hpa {unknown} are not ENS-10 levels; choose from {layout.PRESSURE_LEVELS_HPA}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    times = np.array(ens10_dates(years, dates_per_year), dtype="datetime64[ns]")
    lat = np.linspace(90, -90, grid[0])
    lon = np.linspace(0, 360, grid[1], endpoint=False)
    coslat, sinlat = np.cos(np.radians(lat))[:, None], np.sin(np.radians(lat))[:, None]
    doy = np.array([(t.astype("datetime64[D]") - t.astype("datetime64[Y]")).astype(int) for t in times])

    def fields(variable, level):
        lo, hi = _RANGES.get((variable, level), _RANGES[variable])
        span = hi - lo
        n = len(times)
        truth = np.empty((n, *grid))
        mean, std = np.empty_like(truth), np.empty_like(truth)
        humidity = np.empty_like(truth)
        for i in range(n):
            season = np.cos(2 * math.pi * (doy[i] - 200) / 365)
            anomaly = _smooth_anomaly(rng, lat, lon)
            humidity[i] = _smooth_anomaly(rng, lat, lon)
            truth[i] = lo + span * (0.2 + 0.6 * coslat + 0.08 * sinlat * season + 0.05 * anomaly)
            spread = 0.015 * span * (1 + 0.5 * np.abs(_smooth_anomaly(rng, lat, lon, modes=2)))
            bias = span * (0.03 * np.sin(2 * np.radians(lat))[:, None] + 0.02 * humidity[i])
            center = truth[i] + bias + rng.normal(size=grid) * 1.5 * spread
            ensemble = center + spread * rng.normal(size=(members, *grid))
            mean[i], std[i] = ensemble.mean(0), ensemble.std(0)
        return truth.astype(np.float32), mean.astype(np.float32), std.astype(np.float32)

    coords = {"time": times, "lat": lat, "lon": lon}
    plev = np.array([h * 100 for h in sorted(levels_hpa)], dtype=np.int64)
    pl = {v: [fields(v, h) for h in sorted(levels_hpa)] for v in layout.PRESSURE_VARIABLES}
    for statistic, k in (("mean", 1), ("std", 2)):
        xr.Dataset({v: (("time", "plev", "lat", "lon"), np.stack([f[k] for f in pl[v]], 1)) for v in pl},
                   coords={**coords, "plev": plev}).to_netcdf(root / f"ENS10_pl_{statistic}.nc", engine="h5netcdf")
    sfc = {v: fields(v, None) for v in layout.SURFACE_VARIABLES}
    land = _smooth_anomaly(np.random.default_rng(seed + 1), lat, lon, modes=3) > 0.8  # as in ENS-10: no SST on land
    for k in range(3):
        sfc["SSTK"][k][:, land] = np.nan
    for statistic, k in (("mean", 1), ("std", 2)):
        xr.Dataset({v: (("time", "lat", "lon"), sfc[v][k]) for v in sfc}, coords=coords).to_netcdf(
            root / f"ENS10_sfc_{statistic}.nc", engine="h5netcdf")
    for t in layout.TARGETS.values():
        if t.level_type == "pl":
            if t.plev_pa // 100 not in levels_hpa:
                continue
            truth = pl[t.variable][sorted(levels_hpa).index(t.plev_pa // 100)][0][:, None]
            data = xr.Dataset({t.era5_variable: (("time", "plev", "lat", "lon"), truth)},
                              coords={**coords, "plev": np.array([t.plev_pa])})
        else:
            data = xr.Dataset({t.era5_variable: (("time", "lat", "lon"), sfc[t.variable][0])}, coords=coords)
        data.to_netcdf(root / t.era5_file, engine="h5netcdf")
    return root


def _xarray():
    from effplug._optional import require

    require("h5netcdf", extra="weather")
    return require("xarray", extra="weather")
