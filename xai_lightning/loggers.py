"""A W&B logger that never hangs or crashes for lack of an account, a network or a healthy server.

Online when the user is logged in and the W&B server answers without a server error (HTTP 5xx) within a
few seconds; otherwise offline, with one log line that says why and how to upload the run later
(``wandb sync``). ``WANDB_MODE=offline|disabled`` and ``offline=True`` are respected as given;
``WANDB_MODE=online`` without a login is an error that says how to log in (it is never silently offline).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from xai_lightning.errors import ConfigError
from xai_lightning.net import reachable

log = logging.getLogger(__name__)


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # noqa: BLE001 - any failure to read credentials means "not logged in"
        return False


def _server_error(url: str, timeout: float = 3.0) -> str | None:
    """Why the W&B server at ``url`` cannot take a run (no answer, or an HTTP 5xx), or None when it can."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout).close()
    except urllib.error.HTTPError as err:
        return f"answered HTTP {err.code}" if err.code >= 500 else None  # 4xx: alive, just not this path
    except (OSError, ValueError) as err:
        return f"did not answer ({type(err).__name__})"
    return None


def decide_wandb_mode(offline: bool = False) -> tuple[str, str]:
    """(mode, reason): ``online`` only when logged in and the server answers without error within seconds."""
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("offline", "dryrun", "disabled"):
        return ("disabled" if env == "disabled" else "offline"), f"WANDB_MODE={env}"
    if offline:
        return "offline", "offline=True"
    if not _logged_in():
        if env == "online":
            raise ConfigError(
                "WANDB_MODE=online, but not logged in to W&B: run `wandb login` (or set WANDB_API_KEY), or unset "
                "WANDB_MODE to let runs go offline by themselves"
            )
        return "offline", "not logged in to W&B (no WANDB_API_KEY, no `wandb login`)"
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not reachable(base_url):
        return "offline", f"W&B server {base_url} is unreachable"
    problem = _server_error(base_url)
    if problem:
        return "offline", f"W&B server {base_url} {problem}"
    return "online", "logged in"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that picks online/offline by itself (see module docstring).

    Every argument of Lightning's ``WandbLogger`` / ``wandb.init`` is accepted (``group``, ``job_type``,
    ``tags``, ``id`` to resume a run, ...).
    """

    def __init__(self, *args: Any, offline: bool = False, project: str = "xai-lightning", **kwargs: Any) -> None:
        mode, reason = decide_wandb_mode(offline)
        self.mode = mode
        if mode != "online" or kwargs.get("mode") is None:  # the CLI passes every wandb.init kwarg, mode=None too
            kwargs["mode"] = mode
        super().__init__(*args, offline=mode == "offline", project=project, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # W&B warns that the setting is gone whenever it is passed
            self._wandb_init.pop("anonymous", None)
        if mode == "offline":
            self._announce_offline(reason)

    # ---- W&B failing mid-run must not stop training: warn once, stop using W&B, other loggers go on ----
    @property
    def failed(self) -> bool:
        return getattr(self, "_failed", False)

    def _fail(self, what: str, err: Exception) -> None:
        if not self.failed:
            rank_zero_warn(
                f"W&B failed during {what} ({type(err).__name__}: {err}); training continues without "
                f"W&B, the other loggers (CSV) keep every metric"
            )
        self._failed = True

    def guard(self, what: str, fn, *args, **kwargs):
        """Runs ``fn``; a W&B error degrades to one warning (W&B is then left alone), never a crash."""
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any W&B error: degrade, never crash the run
            self._fail(what, err)
            return None

    def log_metrics(self, metrics, step=None) -> None:
        self.guard("log_metrics", self._log_at_step, metrics, step)

    @rank_zero_only
    def _log_at_step(self, metrics, step=None) -> None:
        """Lightning's ``log_metrics`` lets W&B count its own steps from 0 in every process, so a run resumed
        with the same ``id`` writes steps 0, 1, ... again (an offline resume then cannot be synced beside the
        first part). Here W&B's step is the trainer's step, which a resumed run continues."""
        if step is None or self._wandb_init.get("sync_tensorboard"):
            return super().log_metrics(metrics, step)
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        self.experiment.log(dict(metrics, **{"trainer/global_step": step}), step=int(step))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.guard("log_hyperparams", super().log_hyperparams, params, *args, **kwargs)

    def log_table(self, *args, **kwargs) -> None:
        self.guard("log_table", super().log_table, *args, **kwargs)

    def log_image(self, *args, **kwargs) -> None:
        self.guard("log_image", super().log_image, *args, **kwargs)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.guard("after_save_checkpoint", super().after_save_checkpoint, checkpoint_callback)

    def finalize(self, status: str) -> None:
        self.guard("finalize", super().finalize, status)

    @rank_zero_only
    def _announce_offline(self, reason: str) -> None:
        where = os.path.join(self._save_dir or ".", "wandb")
        log.warning(
            f"W&B offline ({reason}): run files go to {where}/offline-run-*; "
            f"upload later with `wandb sync {where}/offline-run-*`"
        )
