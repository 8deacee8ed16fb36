"""ENS-10: the CRPS scores against properscoring and their defining properties, the synthetic files in the
published layout, the normalisation fitted on training years, the Lightning doors with a checkpoint, and
effplug's QAT and compressed activations on the U-Net."""

import math
import sys

import numpy as np
import pytest
import torch

from effplug.weather import (
    EMOS,
    ENS10Dataset,
    UNet,
    crps_ensemble,
    crps_gaussian,
    ee_crps,
    ens10_dates,
    extreme_forecast_index,
    write_synthetic_ens10,
)


def test_gaussian_and_ensemble_crps_match_properscoring():
    ps = pytest.importorskip("properscoring")
    gen = torch.Generator().manual_seed(0)
    mu, sigma, y = torch.randn(50, generator=gen), torch.rand(50, generator=gen) + 0.1, torch.randn(50, generator=gen)
    expected = ps.crps_gaussian(y.numpy(), mu.numpy(), sigma.numpy())
    assert np.allclose(crps_gaussian(mu.double(), sigma.double(), y.double()).numpy(), expected, atol=1e-10)
    members = torch.randn(10, 50, generator=gen, dtype=torch.float64)
    expected = ps.crps_ensemble(y.double().numpy(), members.T.numpy())
    assert np.allclose(crps_ensemble(members, y.double(), fair=False).numpy(), expected, atol=1e-10)


def test_fair_ensemble_crps_is_unbiased_and_the_standard_one_is_not():
    gen = torch.Generator().manual_seed(1)
    y = torch.full((20000,), 0.3, dtype=torch.float64)
    members = torch.randn(4, 20000, generator=gen, dtype=torch.float64)  # 4 draws from N(0, 1)
    truth = float(crps_gaussian(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.3)))
    fair, standard = crps_ensemble(members, y).mean().item(), crps_ensemble(members, y, fair=False).mean().item()
    assert fair == pytest.approx(truth, abs=0.01)
    assert standard - truth > 0.05  # the m² estimator overstates the CRPS of a small ensemble
    with pytest.raises(ValueError, match="at least 2 members"):
        crps_ensemble(members[:1], y)


def test_extreme_forecast_index_and_the_weighted_crps():
    gen = torch.Generator().manual_seed(2)
    climate = torch.randn(4000, 3, generator=gen, dtype=torch.float64)  # a N(0, 1) climate at 3 points
    mu = torch.tensor([0.0, 6.0, -6.0], dtype=torch.float64)
    efi = extreme_forecast_index(mu, torch.ones(3, dtype=torch.float64), climate)
    assert abs(efi[0]) < 0.03 and efi[1] > 0.9 and efi[2] < -0.9
    shifts = extreme_forecast_index(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
                                    torch.ones(3, dtype=torch.float64), climate)
    assert 0 < shifts[0] < shifts[1] < shifts[2] < 1
    dated = extreme_forecast_index(torch.stack([mu, -mu]), torch.ones(2, 3, dtype=torch.float64), climate)
    assert torch.allclose(dated[0], efi) and torch.allclose(dated[1], -efi, atol=0.03)  # one climate, two dates
    y = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    weights = torch.tensor([0.0, -1.0, 0.5], dtype=torch.float64)
    crps = crps_gaussian(mu, torch.ones(3, dtype=torch.float64), y)
    assert ee_crps(mu, torch.ones(3, dtype=torch.float64), y, weights).item() == pytest.approx(
        float((crps[1] + 0.5 * crps[2]) / 3))


@pytest.fixture(scope="module")
def ens10_root(tmp_path_factory):
    return write_synthetic_ens10(tmp_path_factory.mktemp("ens10"), years=(2013, 2014, 2015, 2016), dates_per_year=4,
                                 grid=(8, 16))


def test_synthetic_files_follow_the_published_layout(ens10_root):
    xr = pytest.importorskip("xarray")
    names = sorted(p.name for p in ens10_root.iterdir())
    assert names == ["ENS10_pl_mean.nc", "ENS10_pl_std.nc", "ENS10_sfc_mean.nc", "ENS10_sfc_std.nc",
                     "ERA5_sfc_t2m.nc", "ERA5_t850.nc", "ERA5_z500.nc"]
    with xr.open_dataset(ens10_root / "ENS10_pl_mean.nc") as pl:
        assert list(pl.data_vars) == ["Z", "T", "Q", "W", "D", "U", "V"]
        assert dict(pl["T"].sizes) == {"time": 16, "plev": 2, "lat": 8, "lon": 16}
        assert pl["plev"].values.tolist() == [50000, 85000]
    with xr.open_dataset(ens10_root / "ENS10_sfc_std.nc") as sfc:
        assert len(sfc.data_vars) == 11 and float(sfc["T2M"].min()) > 0
    cycle, past = ens10_dates((2018,)), ens10_dates((1998,))
    assert len(cycle) == 105 and {d.weekday() for d in cycle} == {0, 3}  # 53 Mondays and 52 Thursdays
    assert [(d.month, d.day) for d in past] == [(d.month, d.day) for d in cycle]  # the same calendar each year


def test_normalisation_comes_from_the_training_years_only(ens10_root):
    train = ENS10Dataset(ens10_root, "t850", (2013, 2014))
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    inputs = x[:, :14].transpose(0, 1).reshape(14, -1)
    assert torch.allclose(inputs.mean(1), torch.zeros(14), atol=1e-4)
    assert torch.allclose(inputs.std(1, unbiased=False), torch.ones(14), atol=1e-3)
    assert abs(float(y.mean())) < 1e-4 and x.shape[1] == train.channels == 17
    test = ENS10Dataset(ens10_root, "t850", (2016, 2016), train.normalization)
    assert test.normalization is train.normalization and len(test) == 4
    surface = ENS10Dataset(ens10_root, "t2m", (2013, 2014), location=False)
    assert surface.channels == 22 and surface.target_channels == (16, 17)
    with pytest.raises(ValueError, match="targets are 't850', 'z500', 't2m'"):
        ENS10Dataset(ens10_root, "t700")
    with pytest.raises(ValueError, match="no ENS-10 dates in 1998-2000"):
        ENS10Dataset(ens10_root, "t850", (1998, 2000))
    with pytest.raises(FileNotFoundError, match="write_synthetic_ens10"):
        ENS10Dataset(ens10_root / "nowhere", "t850")


def test_synthetic_writer_refuses_levels_ens10_lacks(tmp_path):
    with pytest.raises(ValueError, match=r"levels_hpa \[600\] are not ENS-10 levels"):
        write_synthetic_ens10(tmp_path, levels_hpa=(600, 850))


def test_missing_extra_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"pip install 'effplug\[weather\]'"):
        write_synthetic_ens10(tmp_path)


def test_lightning_doors_train_emos_and_restore_the_normalisation(ens10_root, tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from effplug.weather import CRPSRegressionModule, ENS10DataModule

    data = ENS10DataModule(ens10_root, "t850", batch_size=4, train_years=(2013, 2014), val_years=(2015, 2015),
                           test_years=(2016, 2016))
    channels = data.dataset.target_channels
    torch.manual_seed(0)
    module = CRPSRegressionModule(EMOS(*channels), lr=5e-2)
    trainer = pl.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, val_check_interval=10,
                         check_val_every_n_epoch=None)
    trainer.fit(module, data)
    assert math.isfinite(float(trainer.callback_metrics["val_crps"]))
    assert module.target_std == pytest.approx(data.normalization.target_std) and module.target_std > 1
    path = tmp_path / "emos.ckpt"
    trainer.save_checkpoint(path)
    fresh = ENS10DataModule(ens10_root, "t850", train_years=(2013, 2014), val_years=(2015, 2015),
                            test_years=(2016, 2016))
    fresh.load_state_dict(torch.load(path, weights_only=True)["ENS10DataModule"])
    assert torch.equal(fresh.dataset.normalization.input_mean, data.normalization.input_mean)
    assert fresh.dataset.normalization.target_std == data.normalization.target_std
    result = trainer.test(module, data, verbose=False)[0]
    assert math.isfinite(result["test_crps"])
    with pytest.raises(ValueError, match=r"train_years=\(2015, 2013\): give an inclusive \(first, last\)"):
        ENS10DataModule(ens10_root, train_years=(2015, 2013))


def test_unet_trains_with_qat_and_compressed_activations(ens10_root, tmp_path, caplog):
    pl = pytest.importorskip("pytorch_lightning")
    from effplug.callbacks import ActivationCompression, QuantizationAwareTraining
    from effplug.quant import quantized_layers
    from effplug.weather import CRPSRegressionModule, ENS10DataModule

    data = ENS10DataModule(ens10_root, "t850", batch_size=4, train_years=(2013, 2015), val_years=(2016, 2016),
                           test_years=(2016, 2016))
    reports = []

    class LastReport(pl.Callback):  # the engine detaches when fit ends: read its report while it runs
        def on_train_batch_end(self, trainer, *args):
            engine = getattr(trainer.callbacks[0], "engine", None)
            if engine is not None:
                reports.append(engine.last_report)

    for callback in (QuantizationAwareTraining(weight_bits=4, act_bits=8), ActivationCompression(bits=2)):
        torch.manual_seed(0)
        module = CRPSRegressionModule(UNet(data.dataset.channels, width=8), lr=3e-3)
        trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                             limit_val_batches=0, callbacks=[callback, LastReport()])
        trainer.fit(module, data)
        assert math.isfinite(trainer.test(module, data, verbose=False)[0]["test_crps"])
        if isinstance(callback, QuantizationAwareTraining):
            assert len(quantized_layers(module)) == 13  # ten 3x3 convs, two transposed convs, the 1x1 head
            assert "NOT converted" not in caplog.text
        else:
            assert len(reports) == 6 and 0 < reports[-1].held_bytes < reports[-1].original_bytes / 4


def test_recipe_trains_the_unet_in_lightning(ens10_root, tmp_path):
    pytest.importorskip("pytorch_lightning")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ens10_unet", Path(__file__).parents[1] / "recipes" /
                                                  "lightning_ens10_unet.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    result = recipe.main(["--root", str(ens10_root), "--train-years", "2013", "2014", "--val-years", "2015", "2015",
                          "--test-years", "2016", "2016", "--max-steps", "4", "--out", str(tmp_path)])
    assert math.isfinite(result["val_crps"]) and math.isfinite(result["test_crps"])


def test_sst_over_land_is_nan_in_the_files_and_never_reaches_the_model(ens10_root, caplog):
    import logging

    xr = pytest.importorskip("xarray")
    with xr.open_dataset(ens10_root / "ENS10_sfc_mean.nc") as sfc:
        assert bool(sfc["SSTK"].isnull().any()) and not bool(sfc["T2M"].isnull().any())
    with caplog.at_level(logging.WARNING, logger="effplug.weather"):
        surface = ENS10Dataset(ens10_root, "t2m", (2013, 2014))
        x, y = surface[0]
    assert torch.isfinite(surface.normalization.input_mean).all() and torch.isfinite(x).all()
    assert "non-finite inputs in SSTK mean, SSTK std" in caplog.text and torch.isfinite(y).all()
