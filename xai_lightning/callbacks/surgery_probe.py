"""SurgeryProbe: what the model's features carry, by network surgery into a probe CLIP (the paper's view).

Optional beside the ``ConceptProbe`` (the verdict): it reads the same probe batches. During validation,
forward hooks record the maps of the validation forward itself (the first forward of each batch: other
callbacks that run the model again on edited images are not seen); the probe CLIP runs on the same batch and
both are folded into the running sums at once (no feature maps are kept across batches). At epoch end: one
reduction across ranks, matching, then every scored image is scored with captions; counts are reduced and
the surgery's metrics and effects (against random matching and against the run's start) logged as
diagnostics under ``surgery/`` (``xai_lightning.names``). All math lives in
``xai_lightning.surgery.SurgeryPipeline``; it decides no verdict.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from xai_lightning.callbacks import probe_outputs
from xai_lightning.callbacks.common import log_reduced, owned, split_index, val_batches, val_loader
from xai_lightning.callbacks.rebuild import rebuild
from xai_lightning.clip import SPEC_KEYS, load_clip
from xai_lightning.data.protocol import require
from xai_lightning.errors import ConfigError
from xai_lightning.io import check_writable
from xai_lightning.surgery import (
    DEFAULT_CONCEPTS,
    ReferenceOutcomes,
    SurgeryPipeline,
    check_options,
    reference_models,
    resolve_concepts,
)
from xai_lightning.surgery.holdout import holdout_mask
from xai_lightning.surgery.layers import FirstForward
from xai_lightning.surgery.scoring import SurgerySummary

log = logging.getLogger(__name__)

REFERENCES = ("start", "none")
MIN_SCORED = 20  # fewer scored images make intervals that mean nothing


class SurgeryProbe(Callback):
    """Tracks which concept a model relies on: its decisions on the probe set, and what its features carry
    by network surgery into a probe CLIP.

    Args:
        clip: probe CLIP spec (``{embedded: colordigits}``, ``{model: RN50, pretrained: openai, cache_dir: ...}``,
            ``{checkpoint: path}``; see ``xai_lightning.clip``).
        standalone_layers: layers of the LightningModule: preset (``convs`` = the paper's, ``blocks``,
            ``stages``, ``all_convs``), names or globs.
        clip_layers: CLIP layers in cumulative swap order (``stages`` = ``visual.layer1..4``).
        concepts: ``{name: {attribute: ..., template: ...} | {attribute: ..., captions: {value: caption}}}``;
            attributes are those of the datamodule (``digit``, ``color``).
        score: ``reference`` | ``pearson``. matching: ``argmax`` | ``one_to_one``.
        swap_fraction: best-matched fraction of each CLIP layer replaced (1.0 = paper, whole stage).
        interpolation: resizing of transplanted maps (``bilinear`` | ``bicubic`` | ``area`` | ``nearest``).
        reference: ``start`` (the same surgery on the weights the fit started from and on
            ``reference_reinits`` re-initialisations of the architecture by its constructor, computed once
            per run and kept in checkpoints; needed by the ``*_vs_init`` effects) | ``none``.
        reference_reinits: re-initialisations (the model is rebuilt from its saved hyper-parameters under
            seeds; with ``init_checkpoint``/pretrained weights the constructor loads those again).
        fit_split: validation dataloader (name in the datamodule's ``val_split_names``, or index) whose
            batches fit statistics and matching.
        score_splits: validation dataloaders scored with captions after matching.
        holdout: where a score split is the fit split, fit on a fixed pseudo-random half of it (by ``index``)
            and score the other half (fitting and scoring the same images inflates the surgery's effects).
        max_score_samples: images scored per epoch (over all ranks, from the start of each split).
        null_draws: random matchings of the null control. bootstrap: resamples of the intervals.
        every_n_epochs: probe every n-th epoch (and always under ``validate``).
        seed: null matchings, bootstrap and the re-initialisations' seeds.
        zeroshot_warn: warn when the probe's zero-shot accuracy of a concept is below this.
        save_dir: where plans/tables/plots go (default ``<trainer.log_dir>/surgery``).
    """

    def __init__(
        self,
        clip: Mapping[str, Any] | str | None = None,
        standalone_layers: str | Sequence[str] = "convs",
        clip_layers: str | Sequence[str] = "stages",
        concepts: Mapping[str, Mapping[str, Any]] | None = None,
        score: str = "reference",
        matching: str = "argmax",
        swap_fraction: float = 1.0,
        interpolation: str = "bilinear",
        reference: str = "start",
        reference_reinits: int = 3,
        fit_split: str | int = "probe_set",
        score_splits: Sequence[str | int] = ("probe_set",),
        holdout: bool = True,
        max_score_samples: int = 1000,
        null_draws: int = 8,
        bootstrap: int = 2000,
        every_n_epochs: int = 1,
        seed: int = 0,
        zeroshot_warn: float = 0.6,
        save_dir: str | None = None,
    ) -> None:
        super().__init__()
        check_options(score, matching, swap_fraction, interpolation, null_draws)
        clip = {"embedded": "colordigits"} if clip is None else clip
        if isinstance(clip, Mapping):
            unknown = set(clip) - set(SPEC_KEYS)
            if unknown:
                raise ValueError(f"unknown clip keys {sorted(unknown)}; allowed: {', '.join(SPEC_KEYS)}")
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("max_score_samples", max_score_samples),
            ("bootstrap", bootstrap),
        ):
            if int(value) < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if reference not in REFERENCES:
            raise ValueError(f"unknown reference {reference!r}; allowed: {', '.join(REFERENCES)}")
        if int(reference_reinits) < 0:
            raise ValueError(f"reference_reinits={reference_reinits} must be >= 0")
        if not score_splits:
            raise ValueError("score_splits is empty; give at least one validation split (e.g. probe_set)")
        self.clip_spec = dict(clip) if isinstance(clip, Mapping) else clip
        self.standalone_layers, self.clip_layers = standalone_layers, clip_layers
        self.concepts = dict(concepts or DEFAULT_CONCEPTS)
        self.score, self.matching, self.swap_fraction = score, matching, float(swap_fraction)
        self.interpolation = interpolation
        self.reference, self.reference_reinits = reference, int(reference_reinits)
        self.fit_split, self.score_splits, self.holdout = fit_split, list(score_splits), bool(holdout)
        self.max_score_samples, self.null_draws = int(max_score_samples), int(null_draws)
        self.bootstrap, self.every_n_epochs = int(bootstrap), int(every_n_epochs)
        self.seed, self.zeroshot_warn, self.save_dir = int(seed), float(zeroshot_warn), save_dir
        self.pipe: SurgeryPipeline | None = None
        self.history: list[dict[str, Any]] = []
        self.last_summary: SurgerySummary | None = None
        self.reference_info = ""
        self._start_state: dict[str, torch.Tensor] | None = None  # weights at fit start, until references exist
        self._restored_reference: dict | None = None
        self._hooks = contextlib.ExitStack()
        self._recorder: FirstForward | None = None
        self._active = False
        self._fit_seconds = 0.0
        self._skip_reason: str | None = None

    # ---- setup -----------------------------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate") or self.pipe is not None:
            return
        try:
            self._setup(trainer, pl_module)
        except ValueError as err:  # a misconfiguration: one line before any training
            raise ConfigError(str(err) if str(err).startswith("SurgeryProbe") else f"SurgeryProbe: {err}") from err

    def _setup(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = require(trainer.datamodule, "SurgeryProbe")
        captions = resolve_concepts(self.concepts, dm.attributes)
        self.attribute_keys = dict(dm.attribute_keys)
        self.fit_index = split_index(trainer, self.fit_split, "SurgeryProbe")
        self.score_indices = [split_index(trainer, s, "SurgeryProbe") for s in self.score_splits]
        self._check_enough_images(dm)
        out_dir = self._out_dir(trainer)  # every rank asks (log_dir broadcasts); rank 0 checks it is writable
        if trainer.is_global_zero:
            check_writable(out_dir, "SurgeryProbe output directory")
        clip = load_clip(self.clip_spec)
        self.pipe = SurgeryPipeline(
            pl_module,
            clip,
            captions,
            self.standalone_layers,
            self.clip_layers,
            score=self.score,
            matching=self.matching,
            swap_fraction=self.swap_fraction,
            interpolation=self.interpolation,
            null_draws=self.null_draws,
            seed=self.seed,
        )
        rank_zero_info(
            f"SurgeryProbe: {len(self.pipe.standalone_layers)} model layers x {len(self.pipe.clip_layers)} "
            f"CLIP layers ({clip.name}); concepts {captions.names}; fit on {self.fit_split!r}, "
            f"score {self.score_splits}"
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero and getattr(logger, "mode", "") != "disabled":
                logger.experiment.define_metric("epoch")
                logger.experiment.define_metric("surgery/*", step_metric="epoch")

    def _check_enough_images(self, dm) -> None:
        """An interval needs images: refuse a scoring set below ``MIN_SCORED`` before training starts."""
        datasets = dm.datasets or {}
        sizes = [len(datasets[s]) for s in self.score_splits if isinstance(s, str) and s in datasets]
        if len(sizes) != len(self.score_splits):
            return  # sizes unknown before the loaders exist: nothing to check here
        held_out = self.holdout and self.fit_split in self.score_splits
        scored = sum(
            min(n // 2 if held_out and s == self.fit_split else n, self.max_score_samples)
            for n, s in zip(sizes, self.score_splits)
        )
        if scored < MIN_SCORED:
            raise ValueError(
                f"the probe would score {scored} image{'' if scored == 1 else 's'} ({', '.join(self.score_splits)}"
                f"{', the held-out half' if held_out else ''}); its intervals need at least {MIN_SCORED}: "
                "raise the probe set's size (e.g. --data.init_args.probe_per_class)"
            )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The weights the run starts from (a resumed run keeps the snapshot or the references it saved)."""
        if self.reference == "none" or self._start_state is not None or self._restored_reference is not None:
            return
        self._start_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def _probing(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or self.pipe is None:
            return False
        if trainer.state.fn == "validate":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ---- validation: fold batches in -------------------------------------------------------------
    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = self._probing(trainer)
        if not self._active:
            return
        self.pipe.to(pl_module.device)
        self.pipe.reset()
        self._fit_seconds, self._skip_reason = 0.0, None
        self._recorder = self._hooks.enter_context(FirstForward(pl_module, self.pipe.standalone_layers))

    @override
    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._active and dataloader_idx == self.fit_index:
            self._recorder.arm()

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
        if not self._active or dataloader_idx != self.fit_index:
            return
        t0 = time.perf_counter()
        acts = self._recorded_maps()
        keep = self._keep(trainer, batch, fit=True)
        images, acts = batch["image"][keep], {n: a[keep] for n, a in acts.items()}
        bad = [n for n, a in acts.items() if not torch.isfinite(a).all()]
        if bad:
            self._skip_reason = f"non-finite activations in {bad[0]} (batch {batch_idx})"
        elif self._skip_reason is None and len(images):
            self.pipe.fit_batch(images, acts)
        self._fit_seconds += time.perf_counter() - t0

    def _recorded_maps(self) -> dict[str, torch.Tensor]:
        rec = self._recorder
        missing = [n for n in self.pipe.standalone_layers if n not in rec.maps]
        if not rec.recorded or missing:
            raise RuntimeError(
                f"SurgeryProbe: validation_step did not run the hooked layers {missing[:3]}; the "
                f"module's validation_step must call its forward on batch['image']"
            )
        return dict(rec.maps)

    def _keep(self, trainer: L.Trainer, batch: Mapping[str, torch.Tensor], fit: bool, split: int | None = None):
        """This rank's share of the batch's images for the fit (or the scored) half."""
        split = self.fit_index if split is None else split
        index = batch.get("index")
        if index is None:
            if self.holdout and self.fit_index in self.score_indices:
                raise ValueError(
                    "SurgeryProbe(holdout=True) needs batch['index'] (the sample's position in its split) "
                    "to fit and score on disjoint samples; ColorMNISTDataModule provides it"
                )
            return torch.ones(len(batch["image"]), dtype=torch.bool, device=batch["image"].device)
        keep = owned(trainer, split, index)
        if self.holdout and self.fit_index in self.score_indices and split == self.fit_index:
            keep &= holdout_mask(index, fit)
        return keep

    # ---- epoch end: reduce, match, score, log ----------------------------------------------------
    def _sum(self, trainer: L.Trainer):
        return lambda t: trainer.strategy.reduce(t, reduce_op="sum")

    def _max(self, trainer: L.Trainer):
        if trainer.world_size == 1:
            return None
        return lambda t: trainer.strategy.reduce(t, reduce_op=torch.distributed.ReduceOp.MAX)

    def _image_size(self, trainer: L.Trainer) -> int:
        return int(trainer.datamodule.image_size)

    def _fit_images(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator[torch.Tensor]:
        """This rank's fit images, as the validation pass saw them."""
        for batch in val_batches(trainer, self.fit_index):
            images = batch["image"][self._keep(trainer, batch, fit=True)]
            if len(images):
                yield images.to(pl_module.device)

    def _score_triples(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """(images, targets, id) of this rank's scored images; ids are unique across score splits."""
        offsets, total = {}, 0
        for idx in self.score_indices:
            offsets[idx] = total
            total += len(val_loader(trainer, idx).dataset)
        for idx, batch in self._score_batches(trainer, pl_module):
            captions = self.pipe.captions
            targets = torch.stack([batch[self.attribute_keys[a]] for a in captions.attributes]).long()
            index = batch.get("index")
            if index is None:
                if self.reference != "none":
                    raise ValueError("SurgeryProbe(reference='start') needs batch['index'] to pair images")
                index = torch.zeros(len(targets[0]), dtype=torch.long, device=targets.device)
            yield batch["image"], targets, index + offsets[idx]

    def _score_total(self, trainer: L.Trainer) -> int:
        return sum(len(val_loader(trainer, idx).dataset) for idx in self.score_indices)

    def _score_batches(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """This rank's share of the scored images, as (split index, batch). Which images are scored depends
        only on their ``index`` (those below ``max_score_samples``, or below twice that among the held-out
        half), so 1 and N processes score the same set."""
        for idx in self.score_indices:
            held_out = self.holdout and idx == self.fit_index
            limit = self.max_score_samples * (2 if held_out else 1)
            for batch in val_batches(trainer, idx):
                keep = self._keep(trainer, batch, fit=False, split=idx)
                if "index" in batch:
                    keep &= batch["index"] < limit
                    if not bool(keep.any()) and int(batch["index"].min()) >= limit:
                        break
                if bool(keep.any()):
                    yield idx, move_data_to_device({k: v[keep] for k, v in batch.items()}, pl_module.device)

    def _skipped(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        skip = trainer.strategy.reduce(
            torch.tensor(float(self._skip_reason is not None), device=pl_module.device), reduce_op="sum"
        )
        if float(skip) > 0:
            rank_zero_warn(
                f"SurgeryProbe: epoch {trainer.current_epoch} skipped: "
                f"{self._skip_reason or 'non-finite activations on another rank'}"
            )
            pl_module.log("surgery/skipped", 1.0)
        return float(skip) > 0

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        self._hooks.close()
        self._recorder = None
        t0 = time.perf_counter()
        if self._skipped(trainer, pl_module):
            return
        if not self.pipe.moments.has_layout:  # this rank saw no fit sample: join the reduction with zero counts
            self.pipe.moments.init_layout(self.pipe.empty_activations(self._image_size(trainer)))
        # The probe must not change training: every RNG is kept as it was (iterating a DataLoader draws seeds).
        with isolate_rng(include_cuda=pl_module.device.type == "cuda"):
            plan = self.pipe.fit_finish(self._sum(trainer))
            t_match = time.perf_counter()
            reference_seconds = self._ensure_references(trainer, pl_module)
            t_score = time.perf_counter()
            for images, targets, index in self._score_triples(trainer, pl_module):
                self.pipe.score_batch(images, targets, index=index if self.pipe.reference is not None else None)
            summary = self.pipe.score_finish(self._sum(trainer), self._max(trainer), self.bootstrap)
        t_end = time.perf_counter()
        timings = {
            "surgery/fit_seconds": self._fit_seconds + t_match - t0,
            "surgery/score_seconds": t_end - t_score,
            "surgery/seconds": self._fit_seconds + (t_match - t0) + (t_end - t_score),
        }
        if reference_seconds:
            timings["surgery/reference_seconds"] = reference_seconds  # once per run, reported apart
        metrics = self._metrics(summary, plan, timings)
        log_reduced(pl_module, metrics)
        self.last_summary = summary
        self.history.append({"epoch": trainer.current_epoch, **metrics})
        out_dir = self._out_dir(trainer)  # trainer.log_dir broadcasts: every rank must ask
        if trainer.is_global_zero:
            self._report(trainer, summary, plan, metrics, out_dir)

    @staticmethod
    def _metrics(summary: SurgerySummary, plan, timings: Mapping[str, float]) -> dict[str, float]:
        metrics = {f"surgery/{k}": float(v) for k, v in summary.metrics.items()}
        metrics["surgery/match/coverage"] = float(plan.extras["coverage"])
        for layer, s in plan.summaries().items():
            metrics[f"surgery/match/score_mean/{layer}"] = float(s["score_mean"])
        metrics["surgery/images"] = float(summary.images)
        metrics["surgery/skipped"] = 0.0
        metrics.update({k: float(v) for k, v in timings.items()})
        return metrics

    # ---- references ------------------------------------------------------------------------------
    def _ensure_references(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Computes the reference networks' outcomes once per run (restored from a checkpoint if saved);
        returns the seconds it took (0 when nothing was computed)."""
        if self.reference == "none" or self.pipe.reference is not None:
            return 0.0
        if self._restored_reference is not None:
            self.pipe.reference = ReferenceOutcomes.from_state_dict(self._restored_reference["outcomes"])
            self.reference_info = self._restored_reference.get("info", "")
            self._restored_reference = None
            return 0.0
        t0 = time.perf_counter()
        models, self.reference_info = self._reference_models(trainer, pl_module)
        self.pipe.compute_references(
            models,
            lambda: self._fit_images(trainer, pl_module),
            self._score_triples(trainer, pl_module),
            sum_fn=self._sum(trainer),
            image_size=self._image_size(trainer),
            total=self._score_total(trainer),
        )
        self._start_state = None  # the references hold what was needed of it
        seconds = time.perf_counter() - t0
        rank_zero_info(f"SurgeryProbe: references = {self.reference_info}; computed once ({seconds:.1f}s)")
        return seconds

    def _reference_models(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[list, str]:
        seeds = [10_000 * (self.seed + 1) + k for k in range(self.reference_reinits)]
        if self._start_state is None and not seeds:
            raise ValueError(
                "SurgeryProbe(reference='start') under validate has no fit start; set reference_reinits >= 1 "
                "(re-initialisations of the architecture) or reference='none'"
            )
        start = None
        if self._start_state is not None:
            start = rebuild(pl_module, allow_copy=True)
            start.load_state_dict(self._start_state)
        models = reference_models(lambda: rebuild(pl_module), seeds, start)
        parts = ["the weights at fit start"] if start is not None else ["no fit start (validate)"]
        if seeds:
            parts.append(f"{len(seeds)} re-initialisations by {type(pl_module).__name__}'s constructor (seeds {seeds})")
        return models, " + ".join(parts)

    # ---- rank-0 outputs ---------------------------------------------------------------------------
    def _out_dir(self, trainer: L.Trainer) -> str:
        return self.save_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "surgery")

    def _report(self, trainer: L.Trainer, summary: SurgerySummary, plan, metrics: dict[str, float], out: str) -> None:
        epoch = trainer.current_epoch
        # its own lines, never glued to a progress bar
        rank_zero_info("\n" + "\n".join(probe_outputs.summary_lines(summary, metrics, epoch)))
        for c in summary.concepts:
            acc = summary.metrics[f"zeroshot_acc/{c}"]
            if acc < self.zeroshot_warn:
                rank_zero_warn(
                    f"SurgeryProbe: the probe CLIP's zero-shot accuracy for {c!r} is {acc:.2f} "
                    f"(< {self.zeroshot_warn}); it cannot see this concept, so its surgery effects mean little. "
                    f"Use a probe CLIP that knows it (docs/probe_clip.md)."
                )
        rows = probe_outputs.table_rows(summary)
        fig = probe_outputs.match_plot(plan, epoch)
        plan_path = probe_outputs.write_files(out, summary, plan, epoch, rows, fig)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and getattr(logger, "mode", "") != "disabled":
                run = logger.experiment
                what = "SurgeryProbe table/plot/artifact"
                if hasattr(logger, "guard"):
                    logger.guard(what, probe_outputs.log_wandb, run, summary, rows, fig, plan_path, epoch)
                else:
                    probe_outputs.log_wandb(run, summary, rows, fig, plan_path, epoch)
        import matplotlib.pyplot as plt

        plt.close(fig)

    # ---- robustness -------------------------------------------------------------------------------
    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._hooks.close()
        self._active = False
        self._recorder = None

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._hooks.close()
        self._active = False

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"history": self.history}
        if self.pipe is not None and self.pipe.reference is not None:
            state["reference"] = {"outcomes": self.pipe.reference.state_dict(), "info": self.reference_info}
        elif self._restored_reference is not None:
            state["reference"] = self._restored_reference
        elif self._start_state is not None:  # references not computed yet: keep where the run started
            state["start"] = self._start_state
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._restored_reference = state_dict.get("reference")
        self._start_state = state_dict.get("start")
