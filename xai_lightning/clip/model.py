"""The probe CLIP as the surgery uses it: an open_clip CLIP with its tokenizer and input normalization."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.resize import resize_antialiased

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ProbeCLIP(nn.Module):
    """An open_clip ``CLIP`` with its tokenizer and input normalization (the surgery's ``ClipLike``).

    ``model`` is the module whose layers are hooked (``visual.layer1`` ... for ResNet towers).
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        context_length: int = 77,
        name: str = "clip",
        vocabulary: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        import open_clip

        self.model = model.eval()
        # the token ids the text tower was trained on (None: the whole vocabulary, e.g. OpenAI/LAION weights)
        self.vocabulary = None if vocabulary is None else frozenset(int(t) for t in vocabulary)
        self.image_size = int(image_size)
        self.name = name
        self.context_length = int(context_length)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> ProbeCLIP:  # the probe CLIP is frozen: always eval
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> CLIP input: resized (bicubic) to its image size and normalized."""
        return clip_preprocess(images, self.image_size, self.mean, self.std)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.visual.parameters()).dtype
        return self.model.encode_image(x.to(dtype)).float()

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(captions))
        self.check_words(captions, tokens)
        return self.model.encode_text(tokens.to(self.mean.device)).float()

    def check_words(self, captions: Sequence[str], tokens: torch.Tensor | None = None) -> None:
        """One-line error naming the words of ``captions`` the text tower never learnt (they would embed as
        untrained rows: two captions differing in them alone would look alike, or meaningless)."""
        if self.vocabulary is None:
            return
        tokens = self.tokenizer(list(captions)) if tokens is None else tokens
        unknown = sorted({int(t) for t in tokens.flatten().tolist() if int(t) not in self.vocabulary and int(t) != 0})
        if unknown:
            words = sorted({self.tokenizer.decoder[t].replace("</w>", "") for t in unknown})
            raise ValueError(
                f"the probe CLIP {self.name!r} never learnt the word(s) {words} (its vocabulary: the "
                f"{len(self.vocabulary)} tokens of the captions it was trained on); rephrase the captions with "
                "words it knows, or use a CLIP trained on them (docs/probe_clip.md)"
            )

    def tail(self, layer: str, x: torch.Tensor) -> torch.Tensor | None:
        """The image embedding from the output ``x`` of ``layer`` onward, when ``layer`` is the last stage of a
        ResNet tower (only the attention pool remains): a transplant into the last stage then needs no new
        forward through the stages before it. None for any other layer or tower."""
        visual = self.model.visual
        if layer != "visual.layer4" or not hasattr(visual, "attnpool") or not hasattr(visual, "layer4"):
            return None
        return visual.attnpool(x.to(next(visual.parameters()).dtype)).float()


# ---- building blocks -------------------------------------------------------------------------------
def clip_preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> resized (bicubic, anti-aliased when shrinking) to size x size, normalized."""
    x = images.float()
    if x.shape[-1] > size or x.shape[-2] > size:
        x = resize_antialiased(x, (size, size), "bicubic").clamp_(0.0, 1.0)
    elif x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    return (x - mean) / std


def build_open_clip(model_cfg: Mapping[str, Any]) -> nn.Module:
    """An open_clip ``CLIP`` from a config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``)."""
    from open_clip.model import CLIP

    return CLIP(**copy.deepcopy(dict(model_cfg)))
