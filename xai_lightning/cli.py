"""Command line: ``python -m xai_lightning fit|validate|test|predict --config FILE``.

A ``LightningCLI`` in omegaconf parser mode (configs may use ``${...}`` interpolation). Values that
must agree are linked from the datamodule to the model (``num_classes``; ``class_names`` and
``color_names`` for models that take them).
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from typing_extensions import override

from xai_lightning.io import check_writable
from xai_lightning.loggers import WandbLogger


class SaveConfigToRun(SaveConfigCallback):
    """Saves the resolved config to the run directory and, with W&B, into the run's config."""

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.mode != "disabled":
                config = self.parser.dump(self.config, skip_none=False, format="json")
                import json

                logger.experiment.config.update({"cli": json.loads(config)}, allow_val_change=True)


class XAILightningCLI(LightningCLI):
    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def _check_outputs(self) -> None:
        """Every output location must be writable before training starts (not after the first epoch)."""
        trainer = self.trainer
        paths = {trainer.default_root_dir}
        for logger in trainer.loggers:
            save_dir = getattr(logger, "save_dir", None) or getattr(logger, "root_dir", None)
            if save_dir:
                paths.add(str(save_dir))
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "dirpath", None):
                paths.add(str(cb.dirpath))
        if trainer.is_global_zero:
            for path in sorted(paths):
                check_writable(path)

    def before_fit(self) -> None:
        self._check_outputs()

    def before_validate(self) -> None:
        self._check_outputs()

    def before_test(self) -> None:
        self._check_outputs()


def main(args: list[str] | None = None, run: bool = True) -> XAILightningCLI:
    """Entry point; ``args`` replaces ``sys.argv[1:]`` (tests drive the CLI this way)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    kwargs: dict[str, Any] = {}
    if not run:
        kwargs["run"] = False
    return XAILightningCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfigToRun,
        parser_kwargs={"parser_mode": "omegaconf", "default_env": False},
        seed_everything_default=0,
        args=args,
        **kwargs,
    )
