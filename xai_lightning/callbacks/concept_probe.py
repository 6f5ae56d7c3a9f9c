"""ConceptProbe: which concept the model's decisions follow, every validation epoch, for any classifier.

During validation it records, for every image of the probe split, the model's prediction (the class scores
``validation_step`` returned, else one forward of the batch), each concept's value from the data module's
labels and the image's class. At epoch end the records of every rank are gathered and the verdict
(``xai_lightning.verdict.assess``) decides: the share of predictions that follow each concept with a 95%
interval, which concepts count, the outcome and, when undecided, why. No CLIP, no hooks, no reference
networks: the cost is the verdict's arithmetic on top of the validation pass.

Logged (``xai_lightning.names``): ``probe/outcome/<c|none|undecided>``, ``probe/decided``,
``probe/undecided/<reason>``, ``probe/effect[_lo|_hi]/<c>``, ``probe/relies/<c>`` (what ``ConceptAlarm``
reads), ``probe/margin[_lo|_hi]``, ``probe/unexplained[_lo|_hi]``, ``probe/images``, ``probe/seconds``;
with ``log="all"`` also ``probe/p_value/<c>``, ``probe/cell_median/<c>``, ``probe/thin/<c>``. With W&B the run
summary holds the outcome as the console prints it (``probe/verdict``). Each probed epoch's verdict is also
written in words and numbers to ``<log_dir>/concepts/epoch_EEE.json`` (the effects, each concept's value ->
class map, the sentences the console prints); ``python -m xai_lightning.report`` reads the last one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from xai_lightning import names
from xai_lightning.callbacks.common import log_reduced, owned, predictions, split_index
from xai_lightning.callbacks.records import ProbeRecords
from xai_lightning.data.protocol import require
from xai_lightning.errors import ConfigError
from xai_lightning.io import atomic_write_text
from xai_lightning.verdict import ALPHA, MIN_EFFECT, NONE, REASON_KEYS, RESERVED, UNDECIDED, Verdict, assess

log = logging.getLogger(__name__)
LOG_LEVELS = ("default", "all")
READS = ("labels", "captions", "both")


class ConceptProbe(Callback):
    """The verdict every probed validation epoch.

    Args:
        concepts: concept name -> the data module's attribute it reads (``{shape: digit, color: color}``), or a
            list of attributes (each its own name). Default: every attribute of the data module.
        split: the validation dataloader of the probe set (name in ``val_split_names``, or index).
        use_targets: match effects on the images' class labels (``batch["label"]``); turn off when labels are
            random or not the model's classes.
        min_effect: δ, the share of predictions a concept must move (its interval above) to count.
        alpha: family-wise error of "the predictions depend on the concept" over the concepts.
        draws: bootstrap resamples. permutations: of the within-strata null.
        every_n_epochs: probe every n-th epoch (always under ``validate``).
        seed: folds, resamples and permutations (the verdict never touches the training RNG).
        log: ``default`` (what a user acts on) or ``all``.
        read: where concept values come from: ``labels`` (the data module's), ``captions`` (the probe CLIP reads
            every family of ``vocabulary`` off the probe images; no concept label is read) or ``both`` (labels
            for ``concepts``, captions for the vocabulary's other families).
        vocabulary: families -> values -> captions (a YAML file, or ``digitworld``, the default).
        clip: the probe CLIP that reads them (a ``load_clip`` spec; default ``{embedded: digitworld}``).
        min_confidence: a reading below this probability leaves the value unknown.
    """

    def __init__(
        self,
        concepts: Mapping[str, str] | Sequence[str] | None = None,
        split: str | int = "probe_set",
        use_targets: bool = True,
        min_effect: float = MIN_EFFECT,
        alpha: float = ALPHA,
        draws: int = 400,
        permutations: int = 500,
        every_n_epochs: int = 1,
        seed: int = 0,
        log: str = "default",
        read: str = "labels",
        vocabulary: str | Mapping | None = None,
        clip: Mapping[str, Any] | str | None = None,
        min_confidence: float = 0.5,
    ) -> None:
        super().__init__()
        if log not in LOG_LEVELS:
            raise ValueError(f"unknown log {log!r}; allowed: {', '.join(LOG_LEVELS)}")
        if read not in READS:
            raise ValueError(f"unknown read {read!r}; allowed: {', '.join(READS)}")
        self.read, self.vocabulary_spec, self.clip_spec = read, vocabulary, clip
        self.min_confidence = float(min_confidence)
        for name, value, low in (
            ("draws", draws, 2),
            ("permutations", permutations, 1),
            ("every_n_epochs", every_n_epochs, 1),
        ):
            if int(value) < low:
                raise ValueError(f"{name}={value} must be >= {low}")
        if not 0.0 <= float(min_effect) < 1.0 or not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"min_effect={min_effect} must lie in [0, 1) and alpha={alpha} in (0, 1)")
        if isinstance(concepts, Mapping):
            self.concept_map = {str(k): str(v) for k, v in concepts.items()}
        else:
            self.concept_map = {str(a): str(a) for a in concepts} if concepts is not None else None
        reserved = [c for c in self.concept_map or {} if c in RESERVED]
        if reserved:
            raise ValueError(f"concept name {reserved[0]!r} is reserved (an outcome); choose another name")
        self.split, self.use_targets = split, bool(use_targets)
        self.min_effect, self.alpha = float(min_effect), float(alpha)
        self.draws, self.permutations = int(draws), int(permutations)
        self.every_n_epochs, self.seed, self.log_level = int(every_n_epochs), int(seed), log
        self.history: list[dict[str, Any]] = []
        self.last: Verdict | None = None
        self.probed_epoch: int | None = None  # the epoch of the last verdict (ConceptAlarm reads it)
        self._records: ProbeRecords | None = None
        self._active = self._ready = False
        self._batch_seconds = 0.0
        self.reader = None  # CaptionReader, with read="captions" | "both"
        self.read_concepts: list[str] = []  # concepts whose values the probe CLIP reads
        self._read_cache: dict[int, torch.Tensor] = {}  # probe image index -> its readings (the images do not change)
        self._zeroshot: dict[str, list[int]] = {}

    @property
    def concepts(self) -> list[str]:
        return [*(self.concept_map or []), *self.read_concepts]

    # ---- setup --------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        try:
            self._setup(trainer)
        except ValueError as err:
            raise ConfigError(str(err) if str(err).startswith("ConceptProbe") else f"ConceptProbe: {err}") from err

    def _setup(self, trainer: L.Trainer) -> None:
        if self._ready:
            return
        dm = require(trainer.datamodule, "ConceptProbe")
        attributes = dict(dm.attributes)
        if self.concept_map is None:
            self.concept_map = {a: a for a in attributes} if self.read != "captions" else {}
        unknown = sorted(set(self.concept_map.values()) - set(attributes))
        if unknown:
            raise ValueError(f"unknown attribute {unknown[0]!r}; the data module has: {', '.join(attributes)}")
        self.value_names = {c: list(attributes[a]) for c, a in self.concept_map.items()}
        self.batch_keys = {c: dm.attribute_keys[a] for c, a in self.concept_map.items()}
        if self.read != "labels":
            self._setup_reader(attributes, dm.attribute_keys)
        self.class_names = list(dm.class_names)
        self.index = split_index(trainer, self.split, "ConceptProbe")
        rank_zero_info(
            f"ConceptProbe: concepts {self.concepts} on split {dm.val_split_names[self.index]!r} "
            f"(δ = {self.min_effect:g}, family-wise α = {self.alpha:g})"
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero and getattr(logger, "mode", "") != "disabled":
                logger.experiment.define_metric("epoch")
                logger.experiment.define_metric("probe/*", step_metric="epoch")
        self._ready = True

    def _setup_reader(self, attributes: Mapping[str, Sequence[str]], keys: Mapping[str, str]) -> None:
        """The probe CLIP and the vocabulary families it reads (those the labels do not give)."""
        from xai_lightning.clip import load_clip
        from xai_lightning.clip.vocabulary import CaptionReader, load_vocabulary

        vocab = load_vocabulary(self.vocabulary_spec)
        vocab = vocab.restrict([f for f in vocab.families if f not in self.concept_map])
        if not vocab.families:
            raise ValueError("read='both': the labels give every family of the vocabulary; nothing to read")
        self.reader = CaptionReader(load_clip(self.clip_spec or {"embedded": "digitworld"}), vocab, self.min_confidence)
        self.read_concepts = self.reader.families
        self.value_names.update({f: vocab.names(f) for f in self.read_concepts})
        # where the data module labels a family too, how often the CLIP reads the labelled value
        self.check_keys = {
            f: f for f in self.read_concepts if f in attributes and list(attributes[f]) == vocab.names(f)
        }

    def _probing(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or self.concept_map is None:
            return False
        return trainer.state.fn == "validate" or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ---- validation: record the probe split --------------------------------------------------------------
    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = self._probing(trainer)
        if self._active:
            self._records = ProbeRecords(len(self.concepts)).to(pl_module.device)
            self._batch_seconds = 0.0  # the probe's own work in the batches (caption reading, records)
            self._zeroshot = {f: [0, 0] for f in getattr(self, "check_keys", {})}
            if self.reader is not None:
                self.reader.clip.to(pl_module.device)

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx != self.index:
            return
        t0 = time.perf_counter()
        self._record(trainer, pl_module, outputs, batch)
        self._batch_seconds += time.perf_counter() - t0

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any) -> None:
        pred = predictions(outputs, batch, pl_module)
        index = batch.get("index")
        if index is None:
            if trainer.world_size > 1:
                raise ValueError("ConceptProbe under DDP needs batch['index'] (the image's position in its split)")
            start = int(sum(len(i) for i in self._records.index))
            index = torch.arange(start, start + len(pred), device=pred.device)
        mine = owned(trainer, self.index, index).to(pred.device)
        labelled = [batch[self.batch_keys[c]].to(pred.device) for c in self.concept_map]
        values = torch.stack(labelled, dim=1) if labelled else pred.new_zeros(len(pred), 0)
        if self.reader is not None:
            read = self._readings(batch["image"], index).to(pred.device)
            self._count_zeroshot(batch, read, mine)
            values = torch.cat([values, read], dim=1)
        target = batch["label"].to(pred.device) if self.use_targets else torch.full_like(pred, -1)
        self._records.update(index[mine], pred[mine], target[mine], values[mine])

    def _readings(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[B, read families] the probe CLIP's readings, each probe image read once per run."""
        keys = index.tolist()
        todo = [i for i, k in enumerate(keys) if k not in self._read_cache]
        if todo:
            values, _ = self.reader.read(images[todo])
            for i, row in zip(todo, values.cpu()):
                self._read_cache[keys[i]] = row
        return torch.stack([self._read_cache[k] for k in keys])

    def _count_zeroshot(self, batch: Mapping[str, torch.Tensor], read: torch.Tensor, mine: torch.Tensor) -> None:
        for j, family in enumerate(self.read_concepts):
            if family in self._zeroshot:
                truth = batch[self.check_keys[family]].to(read.device)[mine]
                known = truth >= 0
                self._zeroshot[family][0] += int(((read[mine, j] == truth) & known).sum())
                self._zeroshot[family][1] += int(known.sum())

    # ---- epoch end: gather, decide, log -------------------------------------------------------------------
    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        t0 = time.perf_counter()
        rows = self._records.rows()  # every rank's, each image once: every rank decides the same verdict
        values = {c: rows["values"][:, i] for i, c in enumerate(self.concepts)}
        targets = rows["target"] if self.use_targets and (rows["target"] >= 0).any() else None
        verdict = assess(
            rows["pred"],
            values,
            self.value_names,
            targets=targets,
            classes=self.class_names,
            draws=self.draws,
            permutations=self.permutations,
            min_effect=self.min_effect,
            alpha=self.alpha,
            seed=self.seed,
        )
        metrics = verdict_metrics(verdict, self.concepts, self.log_level == "all")
        metrics.update(self._zeroshot_metrics(trainer, pl_module))
        metrics[names.SECONDS] = time.perf_counter() - t0 + self._batch_seconds
        log_reduced(pl_module, metrics)
        self.last, self.probed_epoch = verdict, trainer.current_epoch
        self.history.append({"epoch": trainer.current_epoch, "outcome": verdict.text(), **metrics})
        log_dir = trainer.log_dir or trainer.default_root_dir  # broadcasts: every rank asks
        if trainer.is_global_zero:
            rank_zero_info("\n" + "\n".join(console_lines(verdict, trainer.current_epoch, metrics[names.SECONDS])))
            _wandb_summary(trainer, verdict)
            write_verdict(log_dir, trainer.current_epoch, verdict)

    def _zeroshot_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """``probe/zeroshot_acc/<family>`` where a read family is labelled too (summed over ranks), with a warning
        when the CLIP cannot tell its values apart (within 0.1 of chance): its effect then means nothing."""
        if not self._zeroshot:
            return {}
        counts = torch.tensor([x for pair in self._zeroshot.values() for x in pair], dtype=torch.float64)
        counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        out = {}
        for j, family in enumerate(self._zeroshot):
            hits, n = float(counts[2 * j]), float(counts[2 * j + 1])
            acc = hits / n if n else float("nan")
            out[names.ZEROSHOT.format(c=family)] = acc
            chance = 1.0 / len(self.value_names[family])
            if acc == acc and acc < chance + 0.1:
                rank_zero_warn(
                    f"ConceptProbe: the probe CLIP reads {family!r} at {acc:.2f} (chance {chance:.2f}): it cannot "
                    "see this family, so its effect means nothing; use a CLIP that knows it (docs/probe_clip.md)"
                )
        return out

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def verdict_metrics(verdict: Verdict, concepts: Sequence[str], log_all: bool = False) -> dict[str, float]:
    """The logged numbers of one verdict (names from ``xai_lightning.names``)."""
    out: dict[str, float] = {}
    for c in concepts:
        e = verdict.effects[c]
        out[names.EFFECT.format(c=c)], out[names.EFFECT_LO.format(c=c)], out[names.EFFECT_HI.format(c=c)] = (
            e.value,
            e.lo,
            e.hi,
        )
        out[names.RELIES.format(c=c)] = float(e.relies)
        if log_all:
            out[names.P_VALUE.format(c=c)] = e.p_value
            out[names.CELL_MEDIAN.format(c=c)] = e.cell_median
            out[names.THIN.format(c=c)] = float(e.thin)
    for name in [*concepts, NONE, UNDECIDED]:
        out[names.OUTCOME.format(c=name)] = float(verdict.outcome == name)
    out[names.DECIDED] = float(verdict.decided)
    for reason, key in REASON_KEYS.items():
        out[names.UNDECIDED.format(r=key)] = float(verdict.reason == reason)
    margin = verdict.decision.margin
    if len(concepts) > 1:
        nan = float("nan")
        out[names.MARGIN], out[names.MARGIN_LO], out[names.MARGIN_HI] = (
            (margin.point, margin.lo, margin.hi) if margin is not None else (nan, nan, nan)
        )
    u = verdict.unexplained
    out[names.UNEXPLAINED], out[names.UNEXPLAINED_LO], out[names.UNEXPLAINED_HI] = u.point, u.lo, u.hi
    out[names.IMAGES] = float(verdict.images)
    return out


def console_lines(verdict: Verdict, epoch: int, seconds: float) -> list[str]:
    """The console summary: the outcome, then one line per concept, largest effect first."""
    lines = [f"ConceptProbe epoch {epoch}: {verdict.text()} ({verdict.images} images, {seconds:.1f}s)"]
    lines += [f"  {sentence}" for sentence in verdict.sentences()]
    width = max([12, *map(len, verdict.effects)])
    for c in sorted(verdict.effects, key=lambda c: -_finite(verdict.effects[c].value)):
        e = verdict.effects[c]
        counts = "counts" if e.relies else "      "
        pushes = f"  ({'; '.join(f'{v} -> {k}' for v, k in e.value_classes.items())})" if e.value_classes else ""
        thin = "  thin cells" if e.thin else ""
        lines.append(f"  {c:>{width}}: follows {e.value:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}]  {counts}{pushes}{thin}")
    u = verdict.unexplained
    if u.finite():
        note = "  <- something the listed concepts do not name decides" if verdict.unlisted else ""
        share = f"{u.point:.3f} [{u.lo:.3f}, {u.hi:.3f}]"
        lines.append(f"  {'unexplained':>{width}}: {share} of same-cell pairs predicted apart{note}")
    return lines


def write_verdict(log_dir: str, epoch: int, verdict: Verdict) -> None:
    """``<log_dir>/concepts/epoch_EEE.json``: the verdict in plain types (``Verdict.to_dict``); the report reads
    the last one. A file that cannot be written costs a warning, not the run."""
    path = os.path.join(log_dir, "concepts", f"epoch_{epoch:03d}.json")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps({"epoch": epoch, **verdict.to_dict()}, indent=1, allow_nan=True))
    except OSError as err:
        rank_zero_warn(f"ConceptProbe: could not write {path}: {err}")


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9.0


def _wandb_summary(trainer: L.Trainer, verdict: Verdict) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "mode", "") != "disabled":
            key = names.SUMMARY[0]
            if hasattr(logger, "guard"):
                logger.guard("ConceptProbe summary", logger.experiment.summary.__setitem__, key, verdict.text())
            else:
                logger.experiment.summary[key] = verdict.text()
