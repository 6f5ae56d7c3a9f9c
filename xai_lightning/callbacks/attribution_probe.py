"""AttributionProbe: "where the model looks" (pixel attributions) next to "what concept it uses".

Every ``every_n_epochs`` validation epoch, for the first ``num_images`` images of a validation split
(default ``probe_set``) and the model's predicted class: Grad-CAM on ``gradcam_layer``, Integrated
Gradients, saliency and occlusion (``xai_lightning.attribution``). Needs Captum
(``pip install -e ".[attribution]"``).

Logged per epoch: ``attr/<method>/color_share`` for the methods with a colour-channel axis
(integrated_gradients, saliency, occlusion: the share of attribution that only a change of hue would
produce), ``attr/<method>/on_digit`` for all four (share of attribution on the digit's pixels) and
``attr/seconds``. Heatmap overlays of ``num_heatmaps`` images go to ``<log_dir>/attr/`` as PNG and to W&B
as ``attr/heatmaps``.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from xai_lightning.attribution import CHANNEL_METHODS, METHODS, attribute, color_share, on_digit, require_captum
from xai_lightning.callbacks.common import log_reduced, split_index, val_loader
from xai_lightning.io import atomic_write, check_writable
from xai_lightning.ratio import SumRatio
from xai_lightning.surgery.layers import get_modules

TITLES = {
    "gradcam": "Grad-CAM",
    "integrated_gradients": "Integrated Gradients",
    "saliency": "saliency",
    "occlusion": "occlusion",
}


class AttributionProbe(Callback):
    """Pixel attributions with a colour share per method.

    Args:
        split: validation dataloader (name or index) whose first ``num_images`` samples (by ``index``) are used.
        methods: subset of ``gradcam``, ``integrated_gradients``, ``saliency``, ``occlusion``.
        gradcam_layer: module name for Grad-CAM (default: the ResNet's last stage in a ClassifierModule, 7x7 at
            224 px; at 32 px that stage is 1x1 and its CAM uniform: use ``net.layer2`` there).
        num_images: images attributed per epoch (all ranks together); num_heatmaps: overlays drawn.
        ig_steps, occlusion_window, occlusion_stride: method settings.
    """

    def __init__(
        self,
        split: str | int = "probe_set",
        methods: Sequence[str] = METHODS,
        gradcam_layer: str = "net.layer4",
        num_images: int = 64,
        num_heatmaps: int = 6,
        every_n_epochs: int = 1,
        ig_steps: int = 16,
        occlusion_window: int = 6,
        occlusion_stride: int = 3,
        save_dir: str | None = None,
    ) -> None:
        super().__init__()
        require_captum()
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"unknown attribution methods {unknown or methods}; allowed: {', '.join(METHODS)}")
        for name, value in (("num_images", num_images), ("every_n_epochs", every_n_epochs), ("ig_steps", ig_steps)):
            if int(value) < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        self.split, self.methods, self.gradcam_layer = split, list(methods), gradcam_layer
        self.num_images, self.num_heatmaps = int(num_images), int(num_heatmaps)
        self.every_n_epochs, self.ig_steps = int(every_n_epochs), int(ig_steps)
        self.occlusion_window, self.occlusion_stride = int(occlusion_window), int(occlusion_stride)
        self.save_dir = save_dir
        self.last: dict[str, float] = {}

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        self.index = split_index(trainer, self.split, "AttributionProbe")
        if not hasattr(trainer.datamodule, "rgb"):
            raise ValueError("AttributionProbe needs a datamodule with a colour palette `rgb` [K, 3]")
        self.rgb = trainer.datamodule.rgb.float()
        self.layer = None
        if "gradcam" in self.methods:
            self.layer = get_modules(pl_module, [self.gradcam_layer])[self.gradcam_layer]
        self.out_dir = self.save_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "attr")
        if trainer.is_global_zero:
            check_writable(self.out_dir, "AttributionProbe output directory")

    def _on(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (
            trainer.state.fn == "validate" or (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def _batches(self, trainer: L.Trainer, pl_module: L.LightningModule):
        for batch in val_loader(trainer, self.index):
            keep = batch["index"] < self.num_images
            if not bool(keep.any()):
                if int(batch["index"].min()) >= self.num_images:
                    break
                continue
            yield {k: v[keep].to(pl_module.device) for k, v in batch.items()}

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._on(trainer):
            return
        t0 = time.perf_counter()
        # per method: mean colour share and mean attribution on the digit, summed over ranks by torchmetrics
        kinds = {m: ("color_share", "on_digit") if m in CHANNEL_METHODS else ("on_digit",) for m in self.methods}
        means = {(m, kind): SumRatio().to(pl_module.device) for m in self.methods for kind in kinds[m]}
        shown: dict[str, Any] = {}
        with isolate_rng(include_cuda=pl_module.device.type == "cuda"):
            for batch in self._batches(trainer, pl_module):
                images, color = batch["image"], batch["color"]
                with torch.no_grad():
                    pred = pl_module(images).argmax(-1)
                attrs = attribute(
                    pl_module,
                    images,
                    pred,
                    self.methods,
                    self.layer,
                    self.ig_steps,
                    self.occlusion_window,
                    self.occlusion_stride,
                )
                for m, attr in attrs.items():
                    if m in CHANNEL_METHODS:
                        share = color_share(attr, color, self.rgb, images)
                        ok = torch.isfinite(share)
                        means[(m, "color_share")].update(share[ok].double().sum(), ok.sum())
                    digit = on_digit(attr, images)
                    means[(m, "on_digit")].update(digit.double().sum(), len(digit))
                if not shown:
                    k = min(self.num_heatmaps, len(images))
                    shown = {
                        "images": images[:k].cpu(),
                        "pred": pred[:k].cpu(),
                        "label": batch["label"][:k].cpu(),
                        **{m: a[:k].cpu() for m, a in attrs.items()},
                    }
        metrics = {}
        for (m, kind), mean in means.items():  # compute() reduces over ranks: every rank calls it
            value = float(mean.value())
            if value == value:  # NaN: no image had this measure
                metrics[f"attr/{m}/{kind}"] = value
        metrics["attr/seconds"] = time.perf_counter() - t0
        log_reduced(pl_module, metrics)
        self.last = metrics
        if trainer.is_global_zero and shown:
            self._heatmaps(trainer, shown, metrics)

    def _heatmaps(self, trainer: L.Trainer, shown: dict[str, Any], metrics: dict[str, float]) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        names = getattr(trainer.datamodule, "class_names", None)
        rows, cols = len(shown["images"]), 1 + len(self.methods)
        fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.7 * rows), squeeze=False)
        for i in range(rows):
            img = shown["images"][i].permute(1, 2, 0).clamp(0, 1).numpy()
            label = names[int(shown["label"][i])] if names else int(shown["label"][i])
            pred = names[int(shown["pred"][i])] if names else int(shown["pred"][i])
            axes[i][0].imshow(img)
            axes[i][0].set_title(f"label {label}, pred {pred}", fontsize=7)
            for j, m in enumerate(self.methods, start=1):
                heat = shown[m][i].abs().sum(0).numpy()
                axes[i][j].imshow(img.mean(-1), cmap="gray")
                axes[i][j].imshow(heat / max(heat.max(), 1e-12), cmap="jet", alpha=0.5)
                if i == 0:
                    share = metrics.get(f"attr/{m}/color_share")
                    extra = f"\ncolour share {share:.2f}" if share is not None else "\n(no colour axis)"
                    axes[i][j].set_title(TITLES[m] + extra, fontsize=7)
        for ax in axes.flat:
            ax.axis("off")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        atomic_write(
            os.path.join(self.out_dir, f"heatmaps_epoch{trainer.current_epoch:03d}.png"),
            lambda f: f.write(buf.getvalue()),
        )
        for logger in trainer.loggers:
            if (
                isinstance(logger, WandbLogger)
                and getattr(logger, "mode", "") != "disabled"
                and not getattr(logger, "failed", False)
            ):
                try:
                    import wandb

                    logger.experiment.log(  # at the trainer's step, as every other W&B metric (see loggers.py)
                        {"attr/heatmaps": wandb.Image(fig), "epoch": trainer.current_epoch}, step=trainer.global_step
                    )
                except Exception as err:  # noqa: BLE001 - W&B trouble must not stop training
                    rank_zero_warn(f"AttributionProbe: W&B logging failed ({err}); the PNG is in {self.out_dir}")
        plt.close(fig)
