"""ConceptAlarm on a scripted probe: fires at the right epoch on any spurious concept that counts (not only the
leading one), stops when asked, reads trainer.callback_metrics."""

from __future__ import annotations

import csv
import os

import pytest

from tests.callbacks.test_surgery_probe import _trainer
from tests.helpers.modules import TinyClassifier, tiny_datamodule
from xai_lightning import names
from xai_lightning.callbacks import ConceptAlarm, ConceptProbe
from xai_lightning.callbacks.common import log_reduced
from xai_lightning.callbacks.concept_alarm import alarm_step


class ScriptedProbe(ConceptProbe):
    """A ConceptProbe whose concepts that count per epoch are given (no verdict computed): what the alarm reads
    is only what it logs."""

    def __init__(self, script: list[tuple[str, ...]]) -> None:
        super().__init__(concepts={"shape": "digit", "color": "color"})
        self.script = script

    def on_validation_batch_end(self, *args, **kwargs):
        pass

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        relies = self.script[trainer.current_epoch]
        metrics = {names.RELIES.format(c=c): float(c in relies) for c in self.concepts}
        metrics.update({names.EFFECT.format(c="color"): 0.4, names.EFFECT_LO.format(c="color"): 0.3})
        log_reduced(pl_module, metrics)
        self.probed_epoch = trainer.current_epoch


def _alarm_rows(log_dir) -> dict[int, float]:
    rows = csv.DictReader(open(os.path.join(log_dir, "csv", "version_0", "metrics.csv")))
    return {int(float(r["epoch"])): float(r["alarm/color"]) for r in rows if r.get("alarm/color")}


def _epochs(log_dir) -> int:
    rows = csv.DictReader(open(os.path.join(log_dir, "csv", "version_0", "metrics.csv")))
    return 1 + max(int(float(r["epoch"])) for r in rows if r.get("epoch"))


def test_alarm_step_counts_epochs_in_a_row_and_fires_once():
    streaks, fired, seen = {}, {}, []
    for epoch, relies in enumerate([{"color"}, set(), {"color", "shape"}, {"color"}, {"color"}, {"shape"}]):
        streaks, fire = alarm_step(streaks, {c: c in relies for c in ("color", "shape")}, ["color"], 2, fired)
        fired.update({c: epoch for c in fire})
        seen.append((streaks["color"], fire))
    assert seen == [(1, []), (0, []), (1, []), (2, ["color"]), (3, []), (0, [])]


@pytest.mark.parametrize(
    "script, patience, stop, fired_at, epochs",
    [
        ([(), ("shape",), ("color",), ("color",), ("color",)], 2, False, 3, 5),
        # colour counts beside a leading shape: a secondary shortcut fires too
        ([(), ("shape", "color"), ("shape", "color"), ("shape",), ()], 2, True, 2, 3),  # stopped after epoch 2
        ([("shape",), (), ("shape",), ("shape",), ()], 1, True, None, 5),  # never fires
    ],
)
def test_alarm_fires_at_the_right_epoch_and_stops_when_asked(tmp_path, script, patience, stop, fired_at, epochs):
    alarm = ConceptAlarm(spurious=["color"], patience=patience, stop=stop)
    trainer = _trainer(
        tmp_path, [alarm, ScriptedProbe(script)], max_epochs=len(script), limit_train_batches=1, limit_val_batches=1
    )
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert alarm.fired == ({} if fired_at is None else {"color": fired_at})
    assert _alarm_rows(tmp_path) == ({} if fired_at is None else {fired_at: float(fired_at)})
    assert _epochs(tmp_path) == epochs


@pytest.mark.ddp
def test_alarm_stops_every_rank_of_two_processes(tmp_path):
    alarm = ConceptAlarm(spurious=["color"], patience=1, stop=True)
    trainer = _trainer(
        tmp_path,
        [ScriptedProbe([(), ("color",), ("color",), ("color",)]), alarm],
        max_epochs=4,
        limit_train_batches=1,
        limit_val_batches=1,
        devices=2,
        strategy="ddp_spawn",
    )
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert _alarm_rows(tmp_path) == {1: 1.0} and _epochs(tmp_path) == 2


def test_bad_alarm_arguments(tmp_path):
    with pytest.raises(ValueError, match="patience=0 must be >= 1"):
        ConceptAlarm(patience=0)
    with pytest.raises(ValueError, match="add a ConceptProbe"):
        _trainer(tmp_path, [ConceptAlarm()], max_epochs=1).fit(TinyClassifier(), tiny_datamodule(str(tmp_path)))
    with pytest.raises(ValueError, match=r"spurious \['texture'\] are not probe concepts"):
        trainer = _trainer(tmp_path, [ConceptAlarm(["texture"]), ConceptProbe()], max_epochs=1)
        trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path)))


class UnexplainedProbe(ScriptedProbe):
    """Logs, per epoch, the lower bound of the share of same-cell pairs predicted apart (no concept counts)."""

    def __init__(self, lower: list[float]) -> None:
        super().__init__([()] * len(lower))
        self.lower = lower

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        lo = self.lower[trainer.current_epoch]
        metrics = {names.RELIES.format(c=c): 0.0 for c in self.concepts}
        metrics.update({names.UNEXPLAINED: lo + 0.05, names.UNEXPLAINED_LO: lo, names.UNEXPLAINED_HI: lo + 0.1})
        log_reduced(pl_module, metrics)
        self.probed_epoch = trainer.current_epoch


@pytest.mark.parametrize("unlisted, fired", [(True, {"unlisted": 2}), (False, {})])
def test_something_unlisted_deciding_fires_the_alarm_when_asked(tmp_path, unlisted, fired):
    """Pairs that agree on the class and every counted concept are predicted apart from epoch 1 on (lower bound
    above 0.2 in epochs 1 and 2): with patience 2 the alarm fires at epoch 2, as 'unlisted'; without
    ``unlisted`` it stays silent (no listed concept counts)."""
    alarm = ConceptAlarm(spurious=["color"], patience=2, unlisted=unlisted)
    probe = UnexplainedProbe([0.05, 0.31, 0.42, 0.12])
    trainer = _trainer(tmp_path, [alarm, probe], max_epochs=4, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert alarm.fired == fired
    rows = csv.DictReader(open(os.path.join(tmp_path, "csv", "version_0", "metrics.csv")))
    assert {int(float(r["epoch"])) for r in rows if r.get("alarm/unlisted")} == set(fired.values())


def test_an_alarm_on_nothing_is_an_error():
    with pytest.raises(ValueError, match="spurious is empty"):
        ConceptAlarm(spurious=[])
    assert ConceptAlarm(spurious=[], unlisted=True).unlisted
