"""``effplug fit --config run.yaml``: Lightning's ``LightningCLI`` with effplug's names registered.

Lightning has no plugin discovery for strategy names, so ``strategy: zero2`` in a YAML works only when the
entry script imported ``effplug.strategies`` first. This entry point does that (and imports the callbacks and
precision plugins, so ``class_path: effplug.callbacks.ActivationCompression`` resolves), then hands the
command line to ``LightningCLI`` in subclass mode: the YAML names the model and data by ``class_path``.
"""

from __future__ import annotations

from effplug._optional import require

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def run_lightning_cli(argv: list[str], run: bool = True):
    """``LightningCLI(args=argv)`` after registering effplug's strategy names; returns the CLI object."""
    require("pytorch_lightning", extra="lightning")
    from pytorch_lightning.cli import LightningCLI

    import effplug.callbacks  # noqa: F401  (class paths)
    import effplug.precision  # noqa: F401
    import effplug.strategies  # noqa: F401  (registers ddp_topk, ..., zero2, fsdp2, pipeline_*)

    if run and (not argv or argv[0] not in SUBCOMMANDS):
        raise ValueError(f"effplug's Lightning entry point needs a subcommand first: one of {', '.join(SUBCOMMANDS)}")
    return LightningCLI(args=argv, run=run, subclass_mode_model=True, subclass_mode_data=True,
                        save_config_kwargs={"overwrite": True})
