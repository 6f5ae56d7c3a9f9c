"""ConceptAlarm: raise the alarm (and optionally stop) when a run starts relying on a spurious concept.

Shaped like Lightning's ``EarlyStopping``: the hook (``on_validation_end``, after every callback's epoch-end
work, whatever the callback order) reads the ``SurgeryProbe``'s outcome of this epoch and hands it to a small
pure function, ``alarm_step``, that returns which concepts fire. Only a *named* concept counts (``none`` and
``undecided`` never fire): the probe's calibrated outcome, or, with ``verdict``, the outcome of another
logged verdict metric.

Logged when it fires: ``alarm/<concept>`` = the epoch it fired (once per concept). With W&B also an alert
(``run.alert``, rank 0) carrying the effect and its interval; where alerts are unavailable (offline) a
warning says so instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from xai_lightning.verdict import VERDICTS, outcome_from_metrics


def alarm_step(
    streaks: Mapping[str, int], named: str, spurious: Sequence[str], patience: int, fired: Mapping[str, int]
) -> tuple[dict[str, int], list[str]]:
    """(updated streaks, concepts that fire now): a spurious concept's streak grows while the outcome names it
    and resets otherwise; it fires once, when its streak reaches ``patience``."""
    new = {c: (streaks.get(c, 0) + 1 if named == c else 0) for c in spurious}
    return new, [c for c in spurious if new[c] >= patience and c not in fired]


class ConceptAlarm(Callback):
    """Fires when the probe names a spurious concept for ``patience`` probed epochs in a row.

    Args:
        spurious: concept names (as the probe's ``concepts``) that the model must not rely on.
        patience: consecutive probed epochs the concept must be named before the alarm fires.
        stop: also stop training (on every rank) when it fires.
        verdict: read this verdict metric's outcome instead of the probe's chosen one (any of
            ``xai_lightning.verdict.VERDICTS``).
    """

    def __init__(
        self, spurious: Sequence[str] = ("color",), patience: int = 1, stop: bool = False, verdict: str | None = None
    ) -> None:
        super().__init__()
        if not spurious:
            raise ValueError("spurious is empty; name at least one concept, e.g. [color]")
        if int(patience) < 1:
            raise ValueError(f"patience={patience} must be >= 1")
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; allowed: {', '.join(VERDICTS)}")
        self.spurious, self.patience, self.stop, self.verdict = list(spurious), int(patience), bool(stop), verdict
        self.streaks: dict[str, int] = {}
        self.fired: dict[str, int] = {}
        self._seen_epoch: int | None = None

    def _probe(self, trainer: L.Trainer):
        from xai_lightning.callbacks.surgery_probe import SurgeryProbe

        probes = [cb for cb in trainer.callbacks if isinstance(cb, SurgeryProbe)]
        if not probes:
            raise ValueError("ConceptAlarm reads the SurgeryProbe's outcome: add a SurgeryProbe to the callbacks")
        return probes[0]

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        probe = self._probe(trainer)
        unknown = [c for c in self.spurious if c not in probe.concepts]
        if unknown:
            raise ValueError(
                f"ConceptAlarm: spurious {unknown} are not probe concepts; available: {list(probe.concepts)}"
            )

    def _named(self, entry: Mapping, probe) -> str:
        if self.verdict is None:
            return entry["outcome"].split(" ")[0]  # "undecided (leaning x)" -> "undecided"
        return outcome_from_metrics(entry, list(probe.concepts), self.verdict, prefix="probe/")

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        probe = self._probe(trainer)
        entry = probe.history[-1] if probe.history else None
        if entry is None or entry["epoch"] != trainer.current_epoch or self._seen_epoch == trainer.current_epoch:
            return  # not probed this epoch
        self._seen_epoch = trainer.current_epoch
        named = self._named(entry, probe)
        self.streaks, firing = alarm_step(self.streaks, named, self.spurious, self.patience, self.fired)
        # every rank read the same reduced outcome; agree explicitly anyway, as EarlyStopping does
        if not trainer.strategy.reduce_boolean_decision(bool(firing), all=True):
            return
        for concept in firing:
            self._fire(trainer, concept, entry)
        if self.stop:
            trainer.should_stop = True

    def _fire(self, trainer: L.Trainer, concept: str, entry: Mapping) -> None:
        epoch = trainer.current_epoch
        self.fired[concept] = epoch
        key = f"effect_{self.verdict}" if self.verdict else "effect"
        effect = (
            f"{entry.get(f'probe/{key}/{concept}', float('nan')):+.3f} "
            f"[{entry.get(f'probe/{key}_lo/{concept}', float('nan')):+.3f}, "
            f"{entry.get(f'probe/{key}_hi/{concept}', float('nan')):+.3f}]"
        )
        text = (
            f"ConceptAlarm: epoch {epoch}: the model relies on the spurious concept {concept!r} "
            f"({self.patience} probed epoch(s) in a row; effect {effect}){'; stopping' if self.stop else ''}"
        )
        rank_zero_info(text)
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics({f"alarm/{concept}": float(epoch), "epoch": float(epoch)}, step=trainer.global_step)
            if isinstance(logger, WandbLogger) and getattr(logger, "mode", "") not in ("disabled",):
                self._alert(logger, concept, text)

    @staticmethod
    def _alert(logger: WandbLogger, concept: str, text: str) -> None:
        if getattr(logger, "mode", "") == "offline":
            rank_zero_warn("ConceptAlarm: W&B is offline, so no W&B alert was sent (the alarm is in the logs)")
            return
        try:
            import wandb

            logger.experiment.alert(title=f"Spurious concept: {concept}", text=text, level=wandb.AlertLevel.WARN)
        except Exception as err:  # noqa: BLE001 - an alert that cannot be sent must not stop the run
            rank_zero_warn(f"ConceptAlarm: the W&B alert could not be sent ({type(err).__name__}: {err})")

    @override
    def state_dict(self) -> dict:
        return {"streaks": dict(self.streaks), "fired": dict(self.fired)}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.streaks = dict(state_dict.get("streaks", {}))
        self.fired = dict(state_dict.get("fired", {}))
