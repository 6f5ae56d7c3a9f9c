"""Vocabularies (families -> values -> captions), reading them off images, and the world CLIP's captions."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from xai_lightning.clip.vocabulary import CaptionReader, caption_labels, load_vocabulary

VOCAB = {
    "color": {"red": ["a red digit", "a digit in red"], "green": ["a green digit"]},
    "size": {"small": ["a small digit"], "large": ["a large digit"], "huge": ["a huge digit"]},
}


class TableCLIP:
    """A stand-in CLIP: captions embed to fixed vectors, images are their own embeddings."""

    def __init__(self, table: dict[str, torch.Tensor], scale: float = 10.0) -> None:
        self.table, self.mean = table, torch.zeros(1)
        self.model = type("M", (), {"logit_scale": torch.tensor(np.log(scale))})()

    def encode_text(self, captions):
        return torch.stack([self.table[c] for c in captions])

    def preprocess(self, images):
        return images

    def encode_image(self, x):
        return x


def _table() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    caps = [c for values in VOCAB.values() for cs in values.values() for c in cs]
    return {c: torch.randn(8, generator=g) for c in caps}


def _reference_read(images: np.ndarray, table: dict, scale: float, min_conf: float) -> dict[str, np.ndarray]:
    """numpy: each value's text = normalised mean of its normalised caption vectors; softmax of scaled cosines."""
    out = {}
    emb = images / np.linalg.norm(images, axis=1, keepdims=True)
    for family, values in VOCAB.items():
        text = []
        for caps in values.values():
            m = np.mean([table[c].numpy() / np.linalg.norm(table[c].numpy()) for c in caps], axis=0)
            text.append(m / np.linalg.norm(m))
        logits = scale * emb @ np.stack(text).T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        out[family] = np.where(p.max(1) >= min_conf, p.argmax(1), -1)
    return out


@pytest.mark.parametrize("min_conf", [0.0, 0.6])
def test_caption_reading_matches_a_numpy_reference(min_conf):
    table = _table()
    clip = TableCLIP(table)
    images = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    got = caption_labels(clip, [images[:20], images[20:]], load_vocabulary(VOCAB), min_conf)
    want = _reference_read(images.numpy(), table, 10.0, min_conf)
    for family in VOCAB:
        assert np.array_equal(got.values[family], want[family])
    assert got.names["size"] == ["small", "large", "huge"]
    if min_conf:
        assert (got.values["size"] < 0).any()  # unsure readings stay unknown, not a guess


def test_an_image_on_a_values_caption_is_read_as_that_value():
    table = _table()
    images = torch.stack([table["a huge digit"], table["a green digit"]])
    v, conf = CaptionReader(TableCLIP(table, scale=100.0), load_vocabulary(VOCAB)).read(images)
    assert v[0, 1] == 2 and v[1, 0] == 1 and (conf > 0.5).all()


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"color": {"red": ["a red digit"]}}, "two values or more"),
        ({"color": {"red": [], "green": ["g"]}}, "one caption or more"),
        ([1, 2], "expected families"),
    ],
)
def test_a_malformed_vocabulary_is_a_one_line_error(bad, says):
    with pytest.raises(ValueError, match=says):
        load_vocabulary(bad)


def test_a_missing_vocabulary_file_names_the_embedded_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="digitworld"):
        load_vocabulary(str(tmp_path / "nope.yaml"))


def test_the_default_vocabulary_covers_every_family_of_the_world():
    from xai_lightning.data.world import FAMILIES, VALUES

    vocab = load_vocabulary("digitworld")
    assert set(vocab.families) == set(FAMILIES) and len(vocab.captions()) >= 60
    for family, values in VALUES.items():
        assert vocab.names(family) == list(values)


def test_world_clip_captions_describe_the_images_own_values_with_the_chosen_weights():
    from xai_lightning.models import WorldCLIPModule

    m = WorldCLIPModule(vocabulary=VOCAB, families_per_caption=[1], families_weights=[1.0], family_weight={"size": 4})
    counts = collections.Counter()
    for _ in range(2000):
        cap = m.caption({"color": 1, "size": 2})
        assert cap in ("a green digit", "a huge digit")  # one family, phrased by its own value's caption
        counts[cap] += 1
    # weight 4 vs 1, one family drawn: P(size) = 4 / 5
    assert abs(counts["a huge digit"] / 2000 - 0.8) < 0.03
    m2 = WorldCLIPModule(vocabulary=VOCAB, families_per_caption=[2], families_weights=[1.0])
    assert all(len(m2.caption({"color": 0, "size": 0}).split(" a ")) == 2 for _ in range(50))
    assert m2.caption({"color": -1, "size": 0}) == "a small digit"  # an unknown value is never described
