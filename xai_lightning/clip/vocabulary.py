"""Concepts from captions: a vocabulary (families -> values -> captions) and the probe CLIP's reading of each
image over it — concept values for the verdict where nobody labelled the images.

    vocabulary = load_vocabulary("digitworld")          # or a YAML file, or a mapping
    labels = caption_labels(clip, images, vocabulary)   # family -> value index per image, -1 where unsure
    labels.values["thickness"], labels.names["thickness"], labels.confidence["thickness"]

A value's captions are averaged (prompt ensembling: normalised text embeddings, averaged, normalised); an image
takes the value with the highest similarity, scaled by the CLIP's own temperature and turned into a
probability over the family's values; below ``min_confidence`` it stays unknown (-1) rather than a guess. A
vocabulary file is data (``yaml.safe_load``): nothing in it runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

EMBEDDED_VOCABULARIES = {
    "digitworld": os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "digitworld_vocabulary.yaml")
}
MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Vocabulary:
    """Families -> values -> captions, in order."""

    families: dict[str, dict[str, list[str]]]

    def names(self, family: str) -> list[str]:
        return list(self.families[family])

    def captions(self) -> list[str]:
        return [c for values in self.families.values() for caps in values.values() for c in caps]

    def restrict(self, families: Sequence[str]) -> Vocabulary:
        unknown = [f for f in families if f not in self.families]
        if unknown:
            raise ValueError(f"families {unknown} are not in the vocabulary; it has {', '.join(self.families)}")
        return Vocabulary({f: self.families[f] for f in families})


def _check(raw: object, where: str) -> dict[str, dict[str, list[str]]]:
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"vocabulary {where}: expected families -> values -> captions, got {type(raw).__name__}")
    out: dict[str, dict[str, list[str]]] = {}
    for family, values in raw.items():
        if not isinstance(values, Mapping) or len(values) < 2:
            raise ValueError(f"vocabulary {where}: family {family!r} needs two values or more, each with captions")
        out[str(family)] = {}
        for value, caps in values.items():
            caps = [caps] if isinstance(caps, str) else list(caps or [])
            if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
                raise ValueError(f"vocabulary {where}: {family}/{value} needs one caption or more (strings)")
            out[str(family)][str(value)] = [c.strip() for c in caps]
    return out


def load_vocabulary(spec: str | Mapping | Vocabulary | None = None) -> Vocabulary:
    """A ``Vocabulary`` from an embedded name (``digitworld``, the default), a YAML file or a mapping."""
    if isinstance(spec, Vocabulary):
        return spec
    if spec is None:
        spec = "digitworld"
    if isinstance(spec, Mapping):
        return Vocabulary(_check(spec, "(mapping)"))
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"vocabulary: expected families -> values -> captions or a file, got {type(spec).__name__}")
    path = EMBEDDED_VOCABULARIES.get(spec, spec)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"vocabulary {spec!r}: no such file; give a YAML file (families -> values -> captions) or one of "
            f"{', '.join(EMBEDDED_VOCABULARIES)}"
        )
    import yaml

    with open(path) as f:
        return Vocabulary(_check(yaml.safe_load(f), path))


@dataclass
class CaptionLabels:
    """Concept values read off images by captions."""

    values: dict[str, np.ndarray]  # family -> [N] value index, -1 where the CLIP was not confident
    names: dict[str, list[str]]  # family -> value names
    confidence: dict[str, np.ndarray] = field(default_factory=dict)  # family -> [N] probability of the value

    def accuracy(self, family: str, truth: np.ndarray) -> float:
        """Share of the images with a known truth whose read value is it (unknown reads count as misses)."""
        known = truth >= 0
        return float((self.values[family][known] == truth[known]).mean()) if known.any() else float("nan")


@torch.no_grad()
def value_embeddings(clip, vocabulary: Vocabulary) -> dict[str, torch.Tensor]:
    """Family -> [V, D] normalised mean of each value's normalised caption embeddings."""
    if hasattr(clip, "check_words"):
        clip.check_words(vocabulary.captions())
    out = {}
    for family, values in vocabulary.families.items():
        rows = []
        for caps in values.values():
            emb = F.normalize(clip.encode_text(caps).float(), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=-1))
        out[family] = torch.stack(rows)
    return out


def _scale(clip) -> float:
    model = getattr(clip, "model", clip)
    scale = getattr(model, "logit_scale", None)
    return float(scale.exp()) if isinstance(scale, torch.Tensor) else 100.0


class CaptionReader:
    """Reads a vocabulary's families off batches of images: the text embeddings once, then one CLIP forward per
    batch (``read``: value index per image and family, -1 below ``min_confidence``)."""

    def __init__(self, clip, vocabulary: Vocabulary, min_confidence: float = MIN_CONFIDENCE) -> None:
        self.clip, self.vocabulary, self.min_confidence = clip, vocabulary, float(min_confidence)
        self.text = value_embeddings(clip, vocabulary)
        self.scale = _scale(clip)

    @property
    def families(self) -> list[str]:
        return list(self.text)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Family -> [B, V] probability of each value."""
        emb = F.normalize(self.clip.encode_image(self.clip.preprocess(images)).float(), dim=-1)
        return {f: (self.scale * emb @ t.to(emb.device).T).softmax(-1) for f, t in self.text.items()}

    def read(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, F] value index per family, -1 where unsure; [B, F] the probability of that value)."""
        probs = self.probabilities(images)
        conf, idx = (
            torch.stack([p.max(-1).values for p in probs.values()], 1),
            torch.stack([p.argmax(-1) for p in probs.values()], 1),
        )
        return torch.where(conf >= self.min_confidence, idx, -1), conf


@torch.no_grad()
def caption_labels(
    clip,
    images: Iterable[torch.Tensor],
    vocabulary: Vocabulary,
    min_confidence: float = MIN_CONFIDENCE,
) -> CaptionLabels:
    """Every family's value for every image (module docstring). ``images``: batches [B, 3, H, W] in [0, 1]."""
    reader = CaptionReader(clip, vocabulary, min_confidence)
    values, confidence = [], []
    for x in images:
        v, c = reader.read(x.to(clip.mean.device))
        values.append(v.cpu())
        confidence.append(c.cpu())
    v = torch.cat(values) if values else torch.zeros(0, len(reader.families), dtype=torch.long)
    c = torch.cat(confidence) if confidence else torch.zeros(0, len(reader.families))
    return CaptionLabels(
        {f: v[:, i].numpy() for i, f in enumerate(reader.families)},
        {f: vocabulary.names(f) for f in reader.families},
        {f: c[:, i].numpy() for i, f in enumerate(reader.families)},
    )
