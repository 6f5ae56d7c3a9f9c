"""WorldCLIPModule: trains the digit world's probe CLIP (``clip: {embedded: digitworld}``) on its vocabulary.

Every training image gets a caption made of one to three of its families, each phrased by one of the
vocabulary's captions for the image's value of that family (``a thick digit. a digit over dots.``), in random
order: the CLIP learns every family and every word of the vocabulary, so the probe can read any family off an
image. Validation logs the zero-shot accuracy of each family (``val/zeroshot_<family>_acc``): the value whose
averaged captions match the image best, exactly as the ConceptProbe reads it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from xai_lightning.clip.model import OPENAI_MEAN, OPENAI_STD, build_open_clip, clip_preprocess
from xai_lightning.clip.vocabulary import load_vocabulary
from xai_lightning.models.clip_module import clip_optimizer, contrastive_step
from xai_lightning.ratio import SumRatio

WORLD_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 32, "patch_size": None},
    "text_cfg": {"context_length": 40, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
FAMILIES_PER_CAPTION = (1, 2, 3)  # how many families one training caption describes, and how often
FAMILIES_WEIGHTS = (0.4, 0.35, 0.25)


class WorldCLIPModule(L.LightningModule):
    """Contrastive training of a small open_clip CLIP on a vocabulary's families.

    Args:
        model_cfg: open_clip CLIP config (``WORLD_CLIP_CFG`` by default).
        vocabulary: families -> values -> captions (``xai_lightning.clip.vocabulary``; default ``digitworld``).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay.
        families_per_caption, families_weights: how many families one training caption describes (drawn with
            these weights; every family in about mean / 9 of the captions).
        family_weight: family -> weight of being described (default 1: a family of weight 4 is described about
            four times as often while it is not in most captions).
    """

    def __init__(
        self,
        model_cfg: Mapping[str, Any] | None = None,
        vocabulary: str | Mapping | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        caption_seed: int = 0,
        families_per_caption: Sequence[int] = FAMILIES_PER_CAPTION,
        families_weights: Sequence[float] = FAMILIES_WEIGHTS,
        family_weight: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        cfg = dict(model_cfg or WORLD_CLIP_CFG)
        vocab = load_vocabulary(vocabulary)
        self.save_hyperparameters(
            {
                "model_cfg": cfg,
                "vocabulary": vocab.families,
                "lr": lr,
                "weight_decay": weight_decay,
                "warmup_steps": warmup_steps,
                "caption_seed": caption_seed,
                "families_per_caption": list(families_per_caption),
                "families_weights": list(families_weights),
                "family_weight": dict(family_weight or {}),
            }
        )
        self.vocabulary = vocab
        self.model = build_open_clip(cfg)
        self.image_size = cfg["vision_cfg"]["image_size"]
        from open_clip.loss import ClipLoss
        from open_clip.tokenizer import SimpleTokenizer

        self.loss_fn = ClipLoss()
        self.tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
        self.zeroshot = nn.ModuleDict({f: SumRatio() for f in vocab.families})
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)
        self._rng = random.Random(caption_seed)
        self.families_per_caption, self.families_weights = list(families_per_caption), list(families_weights)
        self.family_weight = {f: float((family_weight or {}).get(f, 1.0)) for f in vocab.families}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images, self.image_size, self.mean, self.std)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x).float()

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(captions)).to(self.device)).float()

    # ---- captions -----------------------------------------------------------------------------
    def _value_index(self, batch: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        """Family -> each image's value index in the vocabulary (by value name; -1 where it has none)."""
        dm = self.trainer.datamodule
        out = {}
        for family in self.vocabulary.families:
            known = self.vocabulary.names(family)
            lookup = {i: known.index(n) if n in known else -1 for i, n in enumerate(dm.attributes[family])}
            out[family] = [lookup.get(int(v), -1) for v in batch[dm.attribute_keys[family]].tolist()]
        return out

    def caption(self, values: Mapping[str, int]) -> str:
        """One caption of some of the image's families (each phrased by one of its value's captions), drawn
        without replacement with the families' weights (Efraimidis-Spirakis keys), in random order."""
        known = [f for f, v in values.items() if v >= 0]
        k = min(self._rng.choices(self.families_per_caption, weights=self.families_weights)[0], len(known))
        keys = {f: self._rng.random() ** (1.0 / self.family_weight[f]) for f in known}
        chosen = sorted(known, key=lambda f: -keys[f])[:k]
        self._rng.shuffle(chosen)
        parts = []
        for family in chosen:
            value = self.vocabulary.names(family)[values[family]]
            parts.append(self._rng.choice(self.vocabulary.families[family][value]))
        return " ".join(parts) or "a photo of a digit."

    def batch_captions(self, batch: Mapping[str, torch.Tensor]) -> list[str]:
        index = self._value_index(batch)
        n = len(batch["image"])
        return [self.caption({f: index[f][i] for f in index}) for i in range(n)]

    # ---- steps --------------------------------------------------------------------------------
    @override
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return contrastive_step(self, batch)

    @override
    def on_validation_epoch_start(self) -> None:
        from xai_lightning.clip.vocabulary import value_embeddings

        self._text = value_embeddings(self, self.vocabulary)

    @override
    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != 0:
            return
        emb = F.normalize(self.encode_image(self.preprocess(batch["image"])), dim=-1)
        index = self._value_index(batch)
        for family, text in self._text.items():
            target = torch.tensor(index[family], device=emb.device)
            known = target >= 0
            hits = ((emb @ text.T).argmax(-1) == target) & known
            self.zeroshot[family].update(hits.sum(), known.sum())

    @override
    def on_validation_epoch_end(self) -> None:
        for family, metric in self.zeroshot.items():
            self.log(f"val/zeroshot_{family}_acc", metric.value().float())
            metric.reset()

    @override
    def configure_optimizers(self) -> dict:
        return clip_optimizer(self)
