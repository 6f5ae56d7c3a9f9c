"""CLIPModule: trains the small domain probe CLIP on captioned coloured digits (open_clip + ClipLoss).

The data must have colours independent of digits (``color_mode: random``) so that the probe learns
colour and shape equally; captions come from templates that name the colour, the digit, both, or
neither. Zero-shot accuracy is measured with the probe's own caption templates
(``xai_lightning.captions.DEFAULT_CONCEPTS``), which are among the training templates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from xai_lightning.captions import DEFAULT_CONCEPTS
from xai_lightning.clip import (
    OPENAI_MEAN,
    OPENAI_STD,
    ProbeCLIP,
    attribute_hits,
    background_text,
    build_open_clip,
    clip_preprocess,
    zeroshot_hits,
    zeroshot_text,
)
from xai_lightning.ratio import SumRatio

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# The embedded probe's architecture: ModifiedResNet vision tower (surgery layers visual.layer1..4, like
# RN50), small text transformer with open_clip's BPE vocabulary. ~8.5M parameters.
PROBE_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 32, "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}

TEMPLATES: dict[str, list[str]] = {
    "color": [
        DEFAULT_CONCEPTS["color"]["template"].format("{color}"),
        "a {color} handwritten digit",
        "a {color} number",
        "a digit drawn in {color}",
    ],
    "digit": [
        DEFAULT_CONCEPTS["shape"]["template"].format("{digit}"),
        "a photo of the number {digit}.",
        "a handwritten {word}",
        "the digit {digit}",
    ],
    "both": [
        "a photo of a {color} digit with the value {digit}.",
        "a {color} handwritten {word}",
        "a {color} {digit}",
        "the number {digit} in {color}",
    ],
    "neither": ["a photo of a digit", "a handwritten number"],
}
KIND_WEIGHTS = {"color": 0.3, "digit": 0.3, "both": 0.35, "neither": 0.05}

# Scenes (digits over background textures): half of the captions name the background, alone or with the
# digit and/or its colour; the other half are the captions above. The probe's background template
# (``a photo of a digit on a {} background.``, configs/scenes/) is the first.
BACKGROUND_TEMPLATES: dict[str, list[str]] = {
    "background": [
        "a photo of a digit on a {background} background.",
        "a digit over {background}",
        "a number in front of {background}",
    ],
    "digit_background": ["a photo of the number {digit} on a {background} background.", "a {word} on {background}"],
    "color_background": ["a {color} digit on a {background} background.", "a {color} number over {background}"],
    "all": [
        "a photo of a {color} digit with the value {digit} on a {background} background.",
        "a {color} {word} on {background}",
    ],
}
BACKGROUND_SHARE = 0.5


def all_captions(
    class_names: Sequence[str], color_names: Sequence[str], background_names: Sequence[str] = ()
) -> set[str]:
    """Every caption the training can draw for these value names (what a probe file's vocabulary must keep)."""
    out: set[str] = set()
    templates = [
        t
        for group in (TEMPLATES, BACKGROUND_TEMPLATES if background_names else {})
        for ts in group.values()
        for t in ts
    ]
    for digit in class_names:
        word = DIGIT_WORDS[int(digit)] if str(digit).isdigit() and 0 <= int(digit) <= 9 else digit
        for color in [*color_names, None]:
            for background in [*background_names, None]:
                for tpl in templates:
                    if (color is None and "{color}" in tpl) or (background is None and "{background}" in tpl):
                        continue
                    out.add(tpl.format(color=color, digit=digit, word=word, background=background))
    return out


def contrastive_step(module: L.LightningModule, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One training step of a probe CLIP (``CLIPModule``, ``WorldCLIPModule``): the batch's images against their
    captions (``module.batch_captions``), open_clip's contrastive loss, logged as ``train/loss`` and
    ``train/logit_scale``."""
    x = module.preprocess(batch["image"])
    tokens = module.tokenizer(module.batch_captions(batch)).to(module.device)
    img, txt, scale = module.model(x, tokens)
    loss = module.loss_fn(img, txt, scale)
    module.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
    module.log("train/logit_scale", scale.detach(), on_step=True, on_epoch=False)
    return loss


class CLIPModule(L.LightningModule):
    """Contrastive training of a small open_clip CLIP on dict batches (``image``, ``digit``, ``color``).

    Logged: ``train/loss``, ``val/zeroshot_digit_acc``, ``val/zeroshot_color_acc``, ``train/logit_scale``, and
    ``val/zeroshot_background_acc`` on scenes (a datamodule with ``background_names``).

    Args:
        model_cfg: open_clip CLIP config (``PROBE_CLIP_CFG`` by default).
        class_names, color_names, background_names: taken from the datamodule unless given (the values the
            captions and the zero-shot check name); with backgrounds, half of the captions name the background.
        lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay.
    """

    def __init__(
        self,
        model_cfg: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        color_names: Sequence[str] | None = None,
        background_names: Sequence[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        caption_seed: int = 0,
    ) -> None:
        super().__init__()
        cfg = dict(model_cfg or PROBE_CLIP_CFG)
        self.save_hyperparameters(
            {
                "model_cfg": cfg,
                "lr": lr,
                "weight_decay": weight_decay,
                "warmup_steps": warmup_steps,
                "caption_seed": caption_seed,
                "class_names": list(class_names or []),
                "color_names": list(color_names or []),
                "background_names": list(background_names or []),
            }
        )
        if num_classes is not None and class_names and len(class_names) != num_classes:
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
        self.model = build_open_clip(cfg)
        self.image_size = cfg["vision_cfg"]["image_size"]
        from open_clip.loss import ClipLoss
        from open_clip.tokenizer import SimpleTokenizer

        self.loss_fn = ClipLoss()
        # zero-shot accuracies on the first validation split: hits / images, summed over ranks by torchmetrics
        # ("background" is added when the datamodule or ``background_names`` has backgrounds)
        self.zeroshot = nn.ModuleDict({k: SumRatio() for k in ("digit", "color")})
        self.tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)
        self._caption_rng = random.Random(caption_seed)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images, self.image_size, self.mean, self.std)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(captions)).to(self.device)).float()

    def to_probe_clip(self) -> ProbeCLIP:
        """A frozen copy for probing (the module itself keeps training)."""
        import copy

        cfg = self.hparams.model_cfg
        return ProbeCLIP(
            copy.deepcopy(self.model),
            self.image_size,
            OPENAI_MEAN,
            OPENAI_STD,
            cfg["text_cfg"]["context_length"],
            name="CLIPModule",
        )

    # ---- captions -----------------------------------------------------------------------------
    def _names(self) -> tuple[list[str], list[str]]:
        dm = self.trainer.datamodule if self._trainer is not None else None
        classes = self.hparams.class_names or list(getattr(dm, "class_names", []))
        colors = self.hparams.color_names or list(getattr(dm, "color_names", []))
        if not classes or not colors:
            raise ValueError("CLIPModule needs class_names and color_names (linked from the datamodule)")
        return classes, colors

    def _background_names(self) -> list[str]:
        dm = self.trainer.datamodule if self._trainer is not None else None
        return self.hparams.background_names or list(getattr(dm, "background_names", []))

    def caption(self, digit: int, color: str | None, rng: random.Random, background: str | None = None) -> str:
        word = DIGIT_WORDS[int(digit)] if 0 <= int(digit) <= 9 else digit
        if background is not None and rng.random() < BACKGROUND_SHARE:
            kinds = [k for k in BACKGROUND_TEMPLATES if color is not None or "color" not in k and k != "all"]
            tpl = rng.choice(BACKGROUND_TEMPLATES[rng.choice(kinds)])
            return tpl.format(color=color, digit=digit, word=word, background=background)
        kinds = [k for k in KIND_WEIGHTS if color is not None or k in ("digit", "neither")]
        kind = rng.choices(kinds, weights=[KIND_WEIGHTS[k] for k in kinds])[0]
        tpl = rng.choice(TEMPLATES[kind])
        return tpl.format(color=color, digit=digit, word=word)

    def batch_captions(self, batch: Mapping[str, torch.Tensor]) -> list[str]:
        _, colors = self._names()
        backgrounds = self._background_names()
        bgs = batch["background"].tolist() if backgrounds and "background" in batch else [-1] * len(batch["digit"])
        return [
            self.caption(
                int(d),
                colors[int(c)] if int(c) >= 0 else None,
                self._caption_rng,
                backgrounds[int(b)] if int(b) >= 0 else None,
            )
            for d, c, b in zip(batch["digit"].tolist(), batch["color"].tolist(), bgs)
        ]

    # ---- steps --------------------------------------------------------------------------------
    @override
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return contrastive_step(self, batch)

    @override
    def on_validation_epoch_start(self) -> None:
        self._zs_text = zeroshot_text(self.encode_text, *self._names())
        backgrounds = self._background_names()
        self._zs_bg_text = background_text(self.encode_text, backgrounds) if backgrounds else None
        if backgrounds and "background" not in self.zeroshot:  # no parameters and no persistent state
            self.zeroshot["background"] = SumRatio().to(self.device)

    @override
    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != 0:
            return
        emb = F.normalize(self.model.encode_image(self.preprocess(batch["image"])).float(), dim=-1)
        digit = batch.get("digit_index", batch["label"])
        hits = zeroshot_hits(emb, *self._zs_text, digit, batch["color"])  # digit hits, images, colour hits, n
        self.zeroshot["digit"].update(hits[0], hits[1])
        self.zeroshot["color"].update(hits[2], hits[3])
        if self._zs_bg_text is not None:
            bg = attribute_hits(emb, self._zs_bg_text, batch["background"])  # background hits, images
            self.zeroshot["background"].update(bg[0], bg[1])

    @override
    def on_validation_epoch_end(self) -> None:
        kinds = ("digit", "color", "background") if self._zs_bg_text is not None else ("digit", "color")
        for kind in kinds:  # value() reduces over ranks; the metric is reset for the next epoch
            self.log(f"val/zeroshot_{kind}_acc", self.zeroshot[kind].value().float(), prog_bar=True)
            self.zeroshot[kind].reset()

    @override
    def configure_optimizers(self) -> dict:
        return clip_optimizer(self)


def clip_optimizer(module: L.LightningModule) -> dict:
    """AdamW (no weight decay on biases, norms and embeddings) with linear warm-up and cosine decay over the
    run's steps: the probe CLIPs' schedule (``lr``, ``weight_decay``, ``warmup_steps`` from the hparams)."""
    hp = module.hparams
    decay = [p for n, p in module.model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in module.model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=hp.lr
    )
    total = max(int(module.trainer.estimated_stepping_batches), 1)

    def schedule(step: int) -> float:
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        progress = (step - hp.warmup_steps) / max(total - hp.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
