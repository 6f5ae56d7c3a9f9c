"""ConceptAlarm: raise the alarm (and optionally stop) when a run starts relying on a spurious concept.

Shaped like Lightning's ``EarlyStopping``: the hook (``on_validation_end``, after every callback's epoch-end
work, whatever the callback order) reads ``probe/relies/<concept>`` from ``trainer.callback_metrics`` (what the
``ConceptProbe`` logged this epoch) and hands it to a small pure function, ``alarm_step``, that returns which
concepts fire. A spurious concept fires when it *counts* (its null rejected, its interval above δ), whether or
not it leads: a model that reads the digit but sends every red digit to class 0 relies on colour too.

With ``unlisted=True`` it also fires (as ``unlisted``) when something the listed concepts do not name decides:
images that agree on the class and on every concept that counts are predicted apart (``probe/unexplained``,
its interval above the verdict's threshold). A shortcut nobody labelled cannot be named without captions, but
it need not pass in silence.

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

from xai_lightning import names
from xai_lightning.verdict.unexplained import UNEXPLAINED

UNLISTED = "unlisted"  # the alarm's name for "something the listed concepts do not name decides"


def alarm_step(
    streaks: Mapping[str, int],
    relies: Mapping[str, bool],
    spurious: Sequence[str],
    patience: int,
    fired: Mapping[str, int],
) -> tuple[dict[str, int], list[str]]:
    """(updated streaks, concepts that fire now): a spurious concept's streak grows while it counts and resets
    otherwise; it fires once, when its streak reaches ``patience``."""
    new = {c: (streaks.get(c, 0) + 1 if relies.get(c, False) else 0) for c in spurious}
    return new, [c for c in spurious if new[c] >= patience and c not in fired]


def _message(epoch: int, concept: str, metrics: Mapping, patience: int) -> str:
    def read(*keys: str) -> list[float]:
        return [float(metrics.get(k, float("nan"))) for k in keys]

    if concept == UNLISTED:
        u = read(names.UNEXPLAINED, names.UNEXPLAINED_LO, names.UNEXPLAINED_HI)
        return (
            f"ConceptAlarm: epoch {epoch}: something the listed concepts do not name decides ({patience} probed "
            f"epoch(s) in a row; {u[0]:.0%} of the image pairs that agree on the class and every concept that "
            f"counts are predicted apart, [{u[1]:.3f}, {u[2]:.3f}]): list it, or read concepts from captions"
        )
    e = read(*(p.format(c=concept) for p in (names.EFFECT, names.EFFECT_LO, names.EFFECT_HI)))
    return (
        f"ConceptAlarm: epoch {epoch}: the model relies on the spurious concept {concept!r} "
        f"({patience} probed epoch(s) in a row; {e[0]:.0%} of its predictions follow it, "
        f"[{e[1]:+.3f}, {e[2]:+.3f}])"
    )


class ConceptAlarm(Callback):
    """Fires when a spurious concept counts for ``patience`` probed epochs in a row.

    Args:
        spurious: concept names (as the ``ConceptProbe``'s) that the model must not rely on.
        patience: consecutive probed epochs the concept must count before the alarm fires.
        stop: also stop training (on every rank) when it fires.
        unlisted: also fire when something the listed concepts do not name decides (module docstring).
    """

    def __init__(
        self, spurious: Sequence[str] = ("color",), patience: int = 1, stop: bool = False, unlisted: bool = False
    ) -> None:
        super().__init__()
        if not spurious and not unlisted:
            raise ValueError("spurious is empty; name at least one concept, e.g. [color], or set unlisted: true")
        if int(patience) < 1:
            raise ValueError(f"patience={patience} must be >= 1")
        self.spurious, self.patience, self.stop = list(spurious), int(patience), bool(stop)
        self.unlisted = bool(unlisted)
        self.streaks: dict[str, int] = {}
        self.fired: dict[str, int] = {}
        self._seen_epoch: int | None = None

    def _probe(self, trainer: L.Trainer):
        from xai_lightning.callbacks.concept_probe import ConceptProbe

        probes = [cb for cb in trainer.callbacks if isinstance(cb, ConceptProbe)]
        if not probes:
            raise ValueError("ConceptAlarm reads the ConceptProbe's verdict: add a ConceptProbe to the callbacks")
        return probes[0]

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        probe = self._probe(trainer)
        probe.setup(trainer, pl_module, stage)  # its concepts (the data module's, the vocabulary's); idempotent
        unknown = [c for c in self.spurious if c not in probe.concepts]
        if self.unlisted and UNLISTED in probe.concepts:
            raise ValueError(f"ConceptAlarm: a probe concept is named {UNLISTED!r}, which unlisted=True reserves")
        if unknown:
            raise ValueError(
                f"ConceptAlarm: spurious {unknown} are not probe concepts; available: {list(probe.concepts)}"
            )

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        probe = self._probe(trainer)
        if probe.probed_epoch != trainer.current_epoch or self._seen_epoch == trainer.current_epoch:
            return  # not probed this epoch
        self._seen_epoch = trainer.current_epoch
        metrics = trainer.callback_metrics
        relies = {c: float(metrics.get(names.RELIES.format(c=c), 0.0)) == 1.0 for c in self.spurious}
        watched = [*self.spurious, *([UNLISTED] if self.unlisted else [])]
        if self.unlisted:
            relies[UNLISTED] = float(metrics.get(names.UNEXPLAINED_LO, float("nan"))) > UNEXPLAINED
        self.streaks, firing = alarm_step(self.streaks, relies, watched, self.patience, self.fired)
        # every rank read the same reduced verdict; agree explicitly anyway, as EarlyStopping does
        if not trainer.strategy.reduce_boolean_decision(bool(firing), all=True):
            return
        for concept in firing:
            self._fire(trainer, concept, metrics)
        if self.stop:
            trainer.should_stop = True

    def _fire(self, trainer: L.Trainer, concept: str, metrics: Mapping) -> None:
        epoch = trainer.current_epoch
        self.fired[concept] = epoch
        text = _message(epoch, concept, metrics, self.patience) + ("; stopping" if self.stop else "")
        rank_zero_info(text)
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(
                {names.ALARM[0].format(c=concept): float(epoch), "epoch": float(epoch)}, step=trainer.global_step
            )
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
