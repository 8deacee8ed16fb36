import json
import subprocess
import sys

import pytest

import effplug
from effplug import cli, demo


def test_env_prints_versions_triton_and_backend(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for needle in ("torch", "triton", "kernel backend", "devices"):
        assert needle in out


def test_python_dash_m_effplug_works_and_import_needs_only_torch():
    out = subprocess.run([sys.executable, "-m", "effplug", "env"], capture_output=True, text=True, check=True).stdout
    assert f"effplug {effplug.__version__}" in out
    probe = (
        "import sys, torch; x = torch.randn(300); import effplug, effplug.codecs, effplug.profile, effplug.data, effplug.compress;"
        "import effplug.graphs, effplug.weather;"
        "from effplug.kernels import quantize_pack, unpack_dequantize; unpack_dequantize(quantize_pack(x, 4));"
        "heavy = [m for m in ('pytorch_lightning', 'transformers', 'triton', 'sklearn', 'pandas', 'xarray',"
        "'torch_geometric', 'networkx', 'h5netcdf') if m in sys.modules];"
        "print('heavy:', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "heavy: []" in out


def test_missing_optional_dependency_names_the_extra():
    from effplug._optional import require

    with pytest.raises(ImportError, match=r"pip install 'effplug\[hf\]'"):
        require("definitely_not_installed_module", extra="hf")


def test_demo_prints_its_table_and_takes_registered_rows(capsys, tmp_path):
    seen = []

    def with_marker():
        import pytorch_lightning as pl

        class Marker(pl.Callback):
            def on_train_batch_end(self, *args):
                seen.append(1)

        return {"callbacks": [Marker()]}

    demo.register_demo_config(demo.DemoConfig("marker", with_marker, tasks=("digits-resnet",)))
    try:
        path = tmp_path / "demo.json"
        assert cli.main(["demo", "--quick", "--no-progress", "--json", str(path)]) == 0
    finally:
        demo.DEMO_CONFIGS.pop("marker")
    out = capsys.readouterr().out
    assert "| digits-resnet | fp32 baseline |" in out and "| char-gpt2 | fp32 baseline |" in out
    assert "| digits-resnet | marker |" in out and "| char-gpt2 | marker |" not in out
    assert len(seen) == 30
    rows = json.loads(path.read_text())["rows"]
    expected = sum(2 if not c.tasks else len(c.tasks) for c in demo.DEMO_CONFIGS.values()) + 1
    assert len(rows) == expected
    digits = [r for r in rows if r["task"] == "digits-resnet"]
    assert all(0.0 <= r["value"] <= 1.0 and r["saved_mb"] > 0 for r in digits)
    assert digits[0]["step_ratio"] == 1.0
    compressed = {r["task"]: r for r in rows if r["config"] == "actnn 4-bit activations"}
    baseline = {r["task"]: r for r in rows if r["config"] == "fp32 baseline"}
    # the engine's accounting reaches the table
    assert compressed["digits-resnet"]["saved_mb"] < baseline["digits-resnet"]["saved_mb"] / 3
    fused = next(r for r in rows if r["config"] == "fused LayerNorm + GELU")
    assert fused["task"] == "char-gpt2" and fused["saved_mb"] < baseline["char-gpt2"]["saved_mb"] * 0.9
    # 2-process rows: the spawned rank's meter comes back, and their step times compare with dense DDP
    comm = {r["config"]: r for r in rows if r.get("devices") == 2}
    assert comm["DDP dense, 2 procs"]["comm_ratio"] == 1.0 and comm["DDP dense, 2 procs"]["step_ratio"] == 1.0
    assert comm["ddp_topk 1%, 2 procs"]["comm_ratio"] > 40 and comm["ddp_cgx 4-bit, 2 procs"]["comm_ratio"] > 6
    assert "49.8x fewer" in out  # 1% of the gradients, plus the 4-byte non-finite flag each bucket carries


@pytest.mark.parametrize("argv, message", [
    (["plan", "--params", "-1", "--gpus", "8", "--gpu-mem", "80"], "--params -1.0 is not valid"),
    (["plan", "--params", "nan", "--gpus", "8", "--gpu-mem", "80"], "--params nan"),
    (["plan", "--params", "7e9", "--gpus", "8", "--gpu-mem", "inf"], "--gpu-mem inf"),
    (["plan", "--params", "7e9", "--gpus", "0", "--gpu-mem", "80"], "--gpus 0: gpus must be >= 1"),
    (["plan", "--params", "7e9", "--gpus", "8", "--gpu-mem", "80", "--headroom", "1.5"], "above 1"),
    (["demo", "--task", "foo"], "unknown --task 'foo'; choose from 'digits-resnet'"),
    (["demo", "--config", "nope"], "unknown --config 'nope'"),
])
def test_bad_command_lines_exit_with_a_usage_error(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and f"effplug {argv[0]}: error:" in err


LIGHTNING_CLI_YAML = """
seed_everything: 0
model:
  class_path: pytorch_lightning.demos.boring_classes.BoringModel
data:
  class_path: pytorch_lightning.demos.boring_classes.BoringDataModule
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 3
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {root}
  strategy:
    class_path: effplug.strategies.CompressedDDPStrategy
    init_args:
      compressor: cgx
      bits: 8
      min_compress_size: 16
  callbacks:
    - class_path: effplug.callbacks.ActivationCompression
      init_args:
        method: actnn
        bits: 4
"""


def test_effplug_fit_runs_a_lightning_cli_yaml_with_effplug_init_args(tmp_path):
    pytest.importorskip("pytorch_lightning")
    config = tmp_path / "run.yaml"
    config.write_text(LIGHTNING_CLI_YAML.format(root=tmp_path))
    done = subprocess.run([sys.executable, "-m", "effplug", "fit", "--config", str(config)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=3` reached" in done.stderr + done.stdout


@pytest.mark.parametrize("name, kind", [("zero2", "ZeroStrategy"), ("ddp_topk", "CompressedDDPStrategy")])
def test_strategy_names_resolve_in_a_yaml_through_the_entry_point(tmp_path, name, kind):
    pytest.importorskip("pytorch_lightning")
    if name == "zero2":
        pytest.importorskip("deepspeed")
    from effplug.lightning_cli import run_lightning_cli

    config = tmp_path / "run.yaml"
    yaml = LIGHTNING_CLI_YAML.format(root=tmp_path)
    yaml = yaml[:yaml.index("  strategy:")] + f"  strategy: {name}\n"
    config.write_text(yaml)
    cli_object = run_lightning_cli(["--config", str(config)], run=False)
    assert type(cli_object.trainer.strategy).__name__ == kind


@pytest.mark.parametrize("typo, suggestion", [("ddp_top_k", "ddp_topk"), ("zero_2", "zero2"), ("fsdp_2", "fsdp2"),
                                              ("pipeline_gpip", "pipeline_gpipe")])
def test_a_misspelled_strategy_name_suggests_effplugs_name(typo, suggestion):
    pl = pytest.importorskip("pytorch_lightning")
    import effplug.strategies  # noqa: F401

    with pytest.raises(ValueError, match=rf"Did you mean '{suggestion}'\?.*zero3_offload"):
        pl.Trainer(strategy=typo, accelerator="cpu", devices=1, logger=False)
    # every other name still resolves, and the registry's list is still a list
    assert type(pl.Trainer(strategy="ddp_topk", accelerator="cpu", devices=1, logger=False).strategy).__name__ == \
        "CompressedDDPStrategy"
    assert typo not in pl.strategies.StrategyRegistry.available_strategies()


def test_an_unknown_strategy_name_lists_effplugs_names():
    pl = pytest.importorskip("pytorch_lightning")
    import effplug.strategies  # noqa: F401

    with pytest.raises(ValueError, match=r"strategy='warpdrive'`\. Registered names.*ddp_cgx.*zero2"):
        pl.Trainer(strategy="warpdrive", accelerator="cpu", devices=1, logger=False)
