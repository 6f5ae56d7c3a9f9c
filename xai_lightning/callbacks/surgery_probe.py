"""SurgeryProbe: which concept does the model rely on, every validation epoch (DESIGN.md section 7).

During validation, forward hooks on the LightningModule's layers reuse the forward that
``validation_step`` runs anyway; the probe CLIP runs on the same batch and both are folded into the
running sums at once (no feature maps are kept across batches). At epoch end: one reduction across
ranks, matching, caption scoring on each rank's shard of the scoring split, counts reduced, metrics
logged. All math lives in ``xai_lightning.surgery.SurgeryPipeline``.

Logged every probed epoch (``<c>`` = concept, ``<k>`` = caption key, ``<l>`` = CLIP layer):
``probe/share/<c>``, ``probe/share_clip/<c>``, ``probe/share_surgery/<c>``, ``probe/null_share/<c>``,
``probe/effect/<c>``, ``probe/effect_lo/<c>``, ``probe/effect_hi/<c>``, ``probe/correct/<c>``,
``probe/wrong/<c>``, ``probe/zeroshot_acc/<c>``, ``probe/retention/<c>``, ``probe/null_retention/<c>``,
``probe/effect_share/<c>``, ``probe/effect_retention/<c>``, ``probe/margin``, ``probe/margin_lo``,
``probe/margin_hi`` (dominant minus runner-up effect), ``probe/delta/<k>``,
``probe/separation/<c>``, ``probe/separation_clip/<c>``; with a baseline (default) also
``probe/effect_<m>_vs_init/<c>`` (``m`` = share, retention, separation), ``probe/init_retention/<c>``,
``probe/init_share/<c>``, ``probe/init_separation/<c>`` (the random-init copy's own values) and
``probe/baseline_seconds`` (the epoch it is computed, once per run),
``probe/match/coverage``, ``probe/match/score_mean/<l>``, ``probe/seconds`` (= ``probe/fit_seconds`` +
``probe/score_seconds``), ``probe/images``.
With W&B also ``probe/table`` (caption x view), ``probe/match_scores`` (plot) and the surgery plan as
an artifact; the plan, table and plot are also written to ``<log_dir>/probe/``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from xai_lightning.callbacks.common import preserved_rng, split_index, val_loader
from xai_lightning.clip import SPEC_KEYS, load_clip
from xai_lightning.io import atomic_write, atomic_write_text, check_writable
from xai_lightning.surgery import (
    DEFAULT_CONCEPTS,
    ProbeSummary,
    SurgeryPipeline,
    capture,
    check_options,
    resolve_concepts,
)

log = logging.getLogger(__name__)

BASELINES = ("random_init", "none")


class SurgeryProbe(Callback):
    """Tracks which concept a model relies on by network surgery into a probe CLIP.

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
        verdict: metric behind ``probe/effect`` and the dominant concept: ``separation_vs_init`` (default:
            the within-concept caption separation after surgery, trained minus random-init copy),
            ``retention_vs_init``, ``share_vs_init``, ``retention`` | ``share`` (paper; both against the null
            control only). See ``xai_lightning.surgery.scoring``.
        baseline: ``random_init`` (the same surgery on a seeded random-init copy of the model, computed
            once per run on the same images; needed by the ``*_vs_init`` verdicts) | ``none``.
        fit_split: validation dataloader (name in the datamodule's ``val_split_names``, or index) whose
            batches fit statistics and matching.
        score_splits: validation dataloaders scored with captions after matching.
        holdout: where a score split is the fit split, fit on a fixed pseudo-random half of it (by ``index``) and
            score the other half.
            Fitting and scoring the same images inflates the verdict: the argmax matching picks, among tens
            of thousands of channels, those that happen to correlate with the concept in that very sample.
        max_score_samples: images scored per epoch (over all ranks, from the start of each split).
        null_draws: random matchings of the null control. bootstrap: resamples of the effect interval.
        every_n_epochs: probe every n-th epoch (and always under ``validate``).
        seed: null matchings and bootstrap.
        zeroshot_warn: warn when the probe's zero-shot accuracy of a concept is below this.
        save_dir: where plans/tables/plots go (default ``<trainer.log_dir>/probe``).
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
        verdict: str = "separation_vs_init",
        baseline: str = "random_init",
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
        check_options(score, matching, swap_fraction, interpolation, null_draws, verdict)
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
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; allowed: {', '.join(BASELINES)}")
        if verdict.endswith("_vs_init") and baseline == "none":
            raise ValueError(f"verdict {verdict!r} compares with the random-init baseline: set baseline='random_init'")
        if not score_splits:
            raise ValueError("score_splits is empty; give at least one validation split (e.g. probe_set)")
        self.clip_spec = dict(clip) if isinstance(clip, Mapping) else clip
        self.standalone_layers, self.clip_layers = standalone_layers, clip_layers
        self.concepts = dict(concepts or DEFAULT_CONCEPTS)
        self.score, self.matching, self.swap_fraction = score, matching, float(swap_fraction)
        self.interpolation, self.verdict, self.baseline = interpolation, verdict, baseline
        self.fit_split, self.score_splits, self.holdout = fit_split, list(score_splits), bool(holdout)
        self.max_score_samples, self.null_draws, self.bootstrap = (
            int(max_score_samples),
            int(null_draws),
            int(bootstrap),
        )
        self.every_n_epochs, self.seed, self.zeroshot_warn = int(every_n_epochs), int(seed), float(zeroshot_warn)
        self.save_dir = save_dir
        self.pipe: SurgeryPipeline | None = None
        self.history: list[dict[str, Any]] = []
        self.last_summary: ProbeSummary | None = None
        self._hooks = contextlib.ExitStack()
        self._acts: dict[str, torch.Tensor] | None = None
        self._active = False
        self._fitting_batch = False
        self._fit_seconds = 0.0
        self._skip_reason: str | None = None
        self._baseline_metrics: dict[str, float] = {}

    # ---- setup -----------------------------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate") or self.pipe is not None:
            return
        dm = trainer.datamodule
        attributes = getattr(dm, "attributes", None)
        if attributes is None:
            raise ValueError(
                "SurgeryProbe needs a datamodule with `attributes` ({attribute: [value names]}) and "
                "`attribute_keys` ({attribute: batch key}), like ColorMNISTDataModule"
            )
        captions = resolve_concepts(self.concepts, attributes)
        self.attribute_keys = dict(getattr(dm, "attribute_keys", {a: a for a in attributes}))
        self.fit_index = split_index(trainer, self.fit_split, "SurgeryProbe")
        self.score_indices = [split_index(trainer, s, "SurgeryProbe") for s in self.score_splits]
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
            f"score {self.score_splits}; verdict {self.verdict}"
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero and getattr(logger, "mode", "") != "disabled":
                logger.experiment.define_metric("epoch")
                logger.experiment.define_metric("probe/*", step_metric="epoch")

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
        self._fit_seconds = 0.0
        self._skip_reason = None
        self._acts = self._hooks.enter_context(capture(pl_module, self.pipe.standalone_layers))

    @override
    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._fitting_batch = self._active and dataloader_idx == self.fit_index
        if self._acts is not None:
            self._acts.clear()

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
        if not self._fitting_batch:
            return
        t0 = time.perf_counter()
        images = batch["image"]
        acts = dict(self._acts)
        self._acts.clear()
        if self.holdout and self.fit_index in self.score_indices:
            keep = self._half(batch, fit=True)
            images, acts = images[keep], {n: a[keep] for n, a in acts.items()}
        missing = [n for n in self.pipe.standalone_layers if n not in acts]
        if missing:
            raise RuntimeError(
                f"SurgeryProbe: validation_step did not run the hooked layers {missing[:3]}; the "
                f"module's validation_step must call its forward on batch['image']"
            )
        bad = [n for n, a in acts.items() if not torch.isfinite(a).all()]
        if bad:
            self._skip_reason = f"non-finite activations in {bad[0]} (batch {batch_idx})"
        elif self._skip_reason is None and len(images):
            self.pipe.fit_batch(images, acts)
        self._fit_seconds += time.perf_counter() - t0

    # ---- epoch end: reduce, match, score, log ----------------------------------------------------
    def _sum(self, trainer: L.Trainer):
        return lambda t: trainer.strategy.reduce(t, reduce_op="sum")

    def _max(self, trainer: L.Trainer):
        if trainer.world_size == 1:
            return None
        return lambda t: trainer.strategy.reduce(t, reduce_op=torch.distributed.ReduceOp.MAX)

    def _half(self, batch: Mapping[str, torch.Tensor], fit: bool) -> torch.Tensor:
        if "index" not in batch:
            raise ValueError(
                "SurgeryProbe(holdout=True) needs batch['index'] (the sample's position in its split) "
                "to fit and score on disjoint samples; ColorMNISTDataModule provides it"
            )
        return holdout_mask(batch["index"], fit)

    def _fit_images(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """This rank's fit images (the fit half under ``holdout``), as the validation pass saw them."""
        for batch in val_loader(trainer, self.fit_index):
            images = batch["image"]
            if self.holdout and self.fit_index in self.score_indices:
                images = images[self._half(batch, fit=True)]
            if len(images):
                yield images.to(pl_module.device)

    def _score_triples(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """(images, targets, id) of this rank's scored images; ids are unique across score splits."""
        captions = self.pipe.captions
        offset, offsets = 0, {}
        for idx in self.score_indices:
            offsets[idx] = offset
            offset += len(val_loader(trainer, idx).dataset)
        for idx, batch in self._score_batches(trainer, pl_module):
            targets = torch.stack([batch[self.attribute_keys[a]] for a in captions.attributes]).long()
            index = batch.get("index")
            if index is None:
                if self.baseline != "none":
                    raise ValueError("SurgeryProbe(baseline='random_init') needs batch['index'] to pair images")
                index = torch.zeros(len(targets[0]), dtype=torch.long)
            yield batch["image"], targets, index + offsets[idx]

    def _score_batches(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """This rank's share of the scored images, as (split index, batch). Which images are scored depends
        only on their ``index`` (those below ``max_score_samples``, or below twice that among the held-out
        half), so 1 and N processes score the same set."""
        for idx in self.score_indices:
            held_out = self.holdout and idx == self.fit_index
            limit = self.max_score_samples * (2 if held_out else 1)
            for batch in val_loader(trainer, idx):
                if "index" in batch:
                    keep = batch["index"] < limit
                    if held_out:
                        keep &= self._half(batch, fit=False)
                    if not bool(keep.any()):
                        if int(batch["index"].min()) >= limit:
                            break
                        continue
                    batch = {k: v[keep] for k, v in batch.items()}
                yield idx, move_data_to_device(batch, pl_module.device)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        self._hooks.close()
        self._acts = None
        t0 = time.perf_counter()
        skip = trainer.strategy.reduce(
            torch.tensor(float(self._skip_reason is not None), device=pl_module.device), reduce_op="sum"
        )
        if float(skip) > 0:
            rank_zero_warn(
                f"SurgeryProbe: epoch {trainer.current_epoch} verdict skipped: "
                f"{self._skip_reason or 'non-finite activations on another rank'}"
            )
            pl_module.log("probe/skipped", 1.0)
            return
        if self.pipe.moments.s is None:  # this rank saw no fit sample: join the reduction with zero counts
            size = int(getattr(trainer.datamodule, "image_size", self.pipe.clip.image_size))
            self.pipe.moments.init_layout(self.pipe.empty_activations(size))
        # The probe must not change training: keep every RNG as it was (iterating a DataLoader draws seeds).
        with preserved_rng(pl_module.device):
            plan = self.pipe.fit_finish(self._sum(trainer))
            t_match = time.perf_counter()
            baseline_seconds = 0.0
            if self.baseline != "none" and self.pipe.baseline is None:
                t_base = time.perf_counter()
                base = self.pipe.compute_baseline(
                    self._fit_images(trainer, pl_module),
                    self._score_triples(trainer, pl_module),
                    sum_fn=self._sum(trainer),
                    image_size=int(getattr(trainer.datamodule, "image_size", self.pipe.clip.image_size)),
                )
                self._baseline_metrics = {
                    f"probe/init_{k.split('/')[0]}/{k.split('/')[1]}": v
                    for k, v in base.metrics.items()
                    if k.split("/")[0] in ("retention", "share")
                }
                baseline_seconds = time.perf_counter() - t_base  # once per run, reported apart
            for images, targets, index in self._score_triples(trainer, pl_module):
                self.pipe.score_batch(images, targets, index=index)
            summary = self.pipe.score_finish(self._sum(trainer), self._max(trainer), self.verdict, self.bootstrap)
        t_end = time.perf_counter()
        seconds = self._fit_seconds + t_end - t0 - baseline_seconds
        metrics = {f"probe/{k}": v for k, v in summary.metrics.items()}
        metrics["probe/fit_seconds"] = self._fit_seconds + t_match - t0
        metrics["probe/score_seconds"] = t_end - t_match - baseline_seconds
        metrics["probe/match/coverage"] = plan.extras["coverage"]
        for layer, s in plan.summaries().items():
            metrics[f"probe/match/score_mean/{layer}"] = s["score_mean"]
        metrics["probe/seconds"] = seconds
        metrics["probe/images"] = float(summary.images)
        metrics.update(self._baseline_metrics)
        if baseline_seconds:
            metrics["probe/baseline_seconds"] = baseline_seconds
        pl_module.log_dict({k: float(v) for k, v in metrics.items()}, sync_dist=False)
        self.last_summary = summary
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "dominant": summary.dominant,
                "decided": summary.decided,
                **{k: float(v) for k, v in metrics.items()},
            }
        )
        out_dir = self._out_dir(trainer)  # trainer.log_dir broadcasts: every rank must ask
        if trainer.is_global_zero:
            self._report(trainer, summary, plan, metrics, out_dir)

    # ---- rank-0 outputs ---------------------------------------------------------------------------
    def _out_dir(self, trainer: L.Trainer) -> str:
        return self.save_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "probe")

    def _report(self, trainer: L.Trainer, summary: ProbeSummary, plan, metrics: dict[str, float], out: str) -> None:
        epoch = trainer.current_epoch
        m = summary.metrics
        verdict = summary.dominant if summary.decided else f"undecided (leaning {summary.dominant})"
        margin = f", margin {m['margin']:+.3f} [{m['margin_lo']:+.3f}, {m['margin_hi']:+.3f}]" if "margin" in m else ""
        reference = "random init" if summary.verdict.endswith("_vs_init") else "null"
        lines = [
            f"SurgeryProbe epoch {epoch}: dominant concept = {verdict}{margin} "
            f"(verdict {summary.verdict.removesuffix('_vs_init')} vs {reference}, {summary.images} images, "
            f"{metrics['probe/seconds']:.1f}s)"
        ]
        for c in summary.concepts:
            init = metrics.get(f"probe/init_retention/{c}")
            init = f", init {init:.3f}" if init is not None else ""
            sep = f"  separation {m[f'separation/{c}']:+.3f}"
            if f"init_separation/{c}" in m:
                sep += f" (init {m[f'init_separation/{c}']:+.3f}, CLIP unit {m[f'separation_clip/{c}']:.3f})"
            lines.append(
                f"  {c:>10}: effect {m[f'effect/{c}']:+.3f} [{m[f'effect_lo/{c}']:+.3f}, {m[f'effect_hi/{c}']:+.3f}]"
                f"{sep}  retention {m[f'retention/{c}']:.3f} (null {m[f'null_retention/{c}']:.3f}{init})"
                f"  share {m[f'share/{c}']:.3f} (null {m[f'null_share/{c}']:.3f})"
                f"  zero-shot {m[f'zeroshot_acc/{c}']:.3f}"
            )
        rank_zero_info("\n".join(lines))
        for c in summary.concepts:
            acc = summary.metrics[f"zeroshot_acc/{c}"]
            if acc < self.zeroshot_warn:
                rank_zero_warn(
                    f"SurgeryProbe: the probe CLIP's zero-shot accuracy for {c!r} is {acc:.2f} "
                    f"(< {self.zeroshot_warn}); it cannot see this concept, so its effect means little. "
                    f"Use a probe CLIP that knows it (README: 'The probe CLIP')."
                )
        rows = _table_rows(summary)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["caption", "key", "clip", "surgery", "influence", "null_surgery"])
        writer.writerows(rows)
        atomic_write_text(os.path.join(out, f"table_epoch{epoch:03d}.csv"), buf.getvalue())
        plan_path = os.path.join(out, f"plan_epoch{epoch:03d}.pt")
        plan.save(plan_path)
        fig = _match_plot(plan, epoch)
        atomic_write(
            os.path.join(out, f"match_scores_epoch{epoch:03d}.png"), lambda f: fig.savefig(f, format="png", dpi=90)
        )
        for logger in trainer.loggers:
            if (
                isinstance(logger, WandbLogger)
                and getattr(logger, "mode", "") != "disabled"
                and not getattr(logger, "failed", False)
            ):
                try:
                    _log_wandb(logger, summary, rows, fig, plan_path, epoch)
                except Exception as err:  # noqa: BLE001 - W&B trouble must not stop training
                    if hasattr(logger, "_fail"):
                        logger._fail("SurgeryProbe table/plot/artifact", err)
                    else:
                        rank_zero_warn(f"SurgeryProbe: W&B logging failed ({err}); the run dir has everything")
        import matplotlib.pyplot as plt

        plt.close(fig)

    # ---- robustness -------------------------------------------------------------------------------
    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._hooks.close()
        self._active = False
        self._acts = None

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._hooks.close()
        self._active = False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def holdout_mask(index: torch.Tensor, fit: bool) -> torch.Tensor:
    """The fit (or the held-out) half of a split, by sample index: a multiplicative hash, so that any DDP
    sharding (rank = index mod world size) splits evenly, unlike index parity."""
    in_fit = (index.long() * 2654435761) % 4294967296 < 2147483648
    return in_fit if fit else ~in_fit


def _table_rows(summary: ProbeSummary) -> list[list]:
    sims = summary.sim_mean  # [L + 1, K]
    return [
        [
            cap,
            key,
            round(float(sims[0, k]), 5),
            round(float(sims[-1, k]), 5),
            round(float(sims[-1, k] - sims[0, k]), 5),
            round(float(summary.null_sim_mean[k]), 5),
        ]
        for k, (cap, key) in enumerate(zip(summary.captions, summary.keys))
    ]


def _match_plot(plan, epoch: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    data, labels = [], []
    for name, sl in plan.clip_slices().items():
        matched = plan.matching.source[sl] >= 0
        data.append(plan.matching.score[sl][matched].float().cpu().numpy())
        labels.append(f"{name}\n({int(matched.sum())}/{sl.stop - sl.start})")
    ax.boxplot(data, tick_labels=labels, showfliers=False)
    ax.set_ylabel("match score Z")
    ax.set_title(
        f"best-match scores per CLIP layer, epoch {epoch} (coverage {plan.extras['coverage']:.3f})", fontsize=9
    )
    fig.tight_layout()
    return fig


def _log_wandb(logger: WandbLogger, summary: ProbeSummary, rows: list[list], fig, plan_path: str, epoch: int) -> None:
    import wandb

    run = logger.experiment
    table = wandb.Table(columns=["caption", "key", "clip", "surgery", "influence", "null_surgery"], data=rows)
    run.log({"probe/table": table, "probe/match_scores": wandb.Image(fig), "epoch": epoch})
    # the plan also goes into the run's own files (uploaded by `wandb sync`): an offline artifact only
    # references W&B's staging area outside the run directory
    os.makedirs(os.path.join(run.dir, "probe"), exist_ok=True)
    kept = os.path.join(run.dir, "probe", os.path.basename(plan_path))
    shutil.copyfile(plan_path, kept)
    run.save(kept, base_path=run.dir, policy="now")
    art = wandb.Artifact(
        f"surgery-plan-{run.id}",
        type="surgery_plan",
        metadata={"epoch": epoch, "dominant": summary.dominant, "verdict": summary.verdict},
    )
    art.add_file(plan_path, name="plan.pt")
    run.log_artifact(art, aliases=[f"epoch-{epoch}", "latest"])
