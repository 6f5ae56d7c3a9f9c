"""Command line: ``python -m xai_lightning fit|validate|test|predict --config FILE``.

A ``LightningCLI`` in omegaconf parser mode (configs may use ``${...}`` interpolation). Values that
must agree are linked from the datamodule to the model (``num_classes``). Errors that are the user's to
fix (a bad option, an unreadable checkpoint, a full disk) print as one line; ``XAI_DEBUG=1`` shows the
traceback. A run stopped by SIGTERM (a preempted job, ``timeout``) exits with 143 after its last
completed epoch was checkpointed, so schedulers see it failed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import sys
import warnings
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from xai_lightning.checkpoint_io import AtomicCheckpointIO, check_resumable
from xai_lightning.errors import ConfigError, UserError
from xai_lightning.io import check_writable
from xai_lightning.loggers import WandbLogger

SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a terminated process


class SaveConfigToRun(SaveConfigCallback):
    """Saves the resolved config to the run directory and, with W&B, into the run's config."""

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.mode != "disabled":
                config = self.parser.dump(self.config, skip_none=False, format="json")
                logger.experiment.config.update({"cli": json.loads(config)}, allow_val_change=True)


_JSONARGPARSE_LINES = ("Expected a <class", "Not a valid subclass of", "a class path", "a dict ")


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while err is not None and all(err is not e for e in out):
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _first_reason(err: BaseException) -> str:
    """The user's sentence inside jsonargparse's wrapping: a ``UserError`` raised by a constructor anywhere in
    the exception chain, else the first listed reason (``Does not validate against any of the Union subtypes
    ... - digits [12]: each must be in 0-9``), else the message's first line."""
    chain = _chain(err)
    for e in chain:
        if isinstance(e, UserError):
            return str(e)
    reasons = [m.strip() for e in chain for m in re.findall(r"^\s+- (.+)$", str(e), flags=re.M)]
    own = [r for r in reasons if not r.startswith(_JSONARGPARSE_LINES)]  # a constructor's own sentence first
    if own or reasons:
        return (own or reasons)[0]
    text = str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _expanded(given: Any, saved: Any) -> bool:
    """A default (None) or a name (``vocabulary: digitworld``) the module expanded to a mapping when it saved."""
    return (given is None or isinstance(given, str)) and isinstance(saved, dict)


class XAILightningCLI(LightningCLI):
    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--run_name",
            type=str,
            default="run",
            help="the run's name: configs interpolate it (${run_name}) into log, checkpoint and W&B names, so that "
            "an overlay config (e.g. configs/quickstart_debiased.yaml) renames a whole run with one line",
        )

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
            raise ConfigError(_first_reason(err)) from err

    @override
    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path last`` resumes the newest version's last checkpoint; resuming restores the checkpoint's
        model, so a command that asks for another one is refused."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path == "last":
            path = self._last_checkpoint()
            self.config[sub]["ckpt_path"] = path
        if path and os.path.isfile(path):
            self._check_same_model(sub, path)
            self._restore_model_config(sub, path)

    def _restore_model_config(self, sub: str, path: str) -> None:
        """The checkpoint's hyperparameters become the model's config (LightningCLI's own step). A module that
        saves its resolved arguments (``save_hyperparameters({...})``: the probe CLIPs, whose defaults expand to a
        config and a vocabulary) leaves no ``_class_path`` in them; the configured class then reads them, where
        LightningCLI would read them as a bare ``LightningModule`` and refuse every argument."""
        hparams = dict(check_resumable(path).get("hyper_parameters", {}) or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        given = self.config[sub].get("model")
        class_path = hparams.pop("_class_path", None) or getattr(given, "class_path", None)
        model = {"class_path": class_path, "init_args": hparams} if class_path else hparams
        try:
            self.config = self.parser.parse_object({sub: {"model": model}}, self.config)
        except SystemExit as err:
            raise ConfigError(f"--ckpt_path {path}: its saved hyperparameters do not fit {class_path}") from err

    def _last_checkpoint(self) -> str:
        """The newest ``version_N/checkpoints/last.ckpt`` of this run's CSV log folder (Lightning's version
        convention: every new fit, a resume included, logs into the next version)."""
        roots = self._csv_roots()
        found = [p for root in roots for p in glob.glob(os.path.join(root, "version_*", "checkpoints", "last.ckpt"))]
        if not found:
            where = ", ".join(os.path.join(r, "version_*", "checkpoints") for r in roots) or "the run directory"
            raise ConfigError(f"--ckpt_path last: no last.ckpt under {where} to resume; start a new run without it")
        return max(found, key=lambda p: int(os.path.basename(os.path.dirname(os.path.dirname(p)))[8:]))

    def _csv_roots(self) -> list[str]:
        """The run folders (``save_dir/name``) of the configured CSV loggers, read from the config (the trainer
        does not exist yet when the checkpoint path is parsed)."""
        trainer = self.config[self.config["subcommand"]]["trainer"]
        loggers = trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        roots = []
        for lg in loggers:
            path = str(getattr(lg, "class_path", "") or "")
            if path.endswith("CSVLogger"):
                args = getattr(lg, "init_args", None) or {}
                roots.append(os.path.join(str(args.get("save_dir")), str(args.get("name") or "lightning_logs")))
        return roots

    def _check_same_model(self, sub: str, path: str) -> None:
        hparams = dict(check_resumable(path).get("hyper_parameters", {}) or {})
        given = self.config[sub].get("model")
        given = dict(getattr(given, "init_args", {}) or {}) if given is not None else {}
        clash = {
            k: (v, given[k])
            for k, v in hparams.items()
            if not k.startswith("_") and k in given and given[k] != v and k != "num_classes"
            if not _expanded(given[k], v)
        }
        if clash:
            k, (saved, asked) = next(iter(clash.items()))
            raise ConfigError(
                f"--ckpt_path {path} holds a model with {k}={saved!r}, the command asks for {asked!r}; resuming "
                f"restores the checkpoint's model: drop --model.init_args.{k}, or start a new run without "
                "--ckpt_path"
            )

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(hasattr(p, "save_checkpoint") for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)

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

    def _say_version(self) -> None:
        """Which version this fit logs to (a new fit into a folder with runs becomes its next version)."""
        for logger in self.trainer.loggers:
            if isinstance(logger, CSVLogger) and self.trainer.is_global_zero:
                earlier = sorted(glob.glob(os.path.join(logger.save_dir, logger.name or "", "version_*")))
                note = f" (earlier: {', '.join(os.path.basename(v) for v in earlier)})" if earlier else ""
                logging.getLogger(__name__).info(f"this run logs to {logger.log_dir}{note}")

    def before_fit(self) -> None:
        self._check_outputs()
        self._say_version()

    def before_validate(self) -> None:
        self._check_outputs()

    def before_test(self) -> None:
        self._check_outputs()


def _quiet() -> None:
    """Silence what is not the user's business (library deprecations, tips)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*The anonymous setting has no effect.*")
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("", "lightning.pytorch", "lightning.fabric"):  # the handlers every message passes through
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(lambda record: "litlogger" not in record.getMessage())


def main(args: list[str] | None = None, run: bool = True) -> XAILightningCLI:
    """Entry point; ``args`` replaces ``sys.argv[1:]`` (tests drive the CLI this way)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet()
    kwargs: dict[str, Any] = {}
    if not run:
        kwargs["run"] = False
    # omegaconf+: interpolations resolve on the merged configs, so an overlay's run_name renames the whole run;
    # ${run_name} is written from the subcommand's root (fit/validate/test)
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    try:
        return XAILightningCLI(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigToRun,
            parser_kwargs={"parser_mode": "omegaconf+", "default_env": False},
            seed_everything_default=0,
            args=args,
            **kwargs,
        )
    except SIGTERMException:
        sys.stderr.write(
            "terminated (SIGTERM): the last completed epoch is in last.ckpt; resume with --ckpt_path last\n"
        )
        raise SystemExit(SIGTERM_EXIT) from None
    except UserError as err:
        if os.environ.get("XAI_DEBUG"):
            raise
        sys.stderr.write(f"error: {err}\n(set XAI_DEBUG=1 for the traceback)\n")
        raise SystemExit(2) from None
