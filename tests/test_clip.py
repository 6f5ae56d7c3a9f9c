"""Probe CLIP loading: the shipped embedded probe works on fresh data; offline errors are fast and clear."""

from __future__ import annotations

import time

import pytest
import torch

from tests.helpers.tiny import TINY_CLIP_CFG, tiny_clip
from xai_lightning.clip import load_clip, save_probe_clip, zeroshot_accuracy
from xai_lightning.data import ColorMNISTDataModule


def _fresh(tmp_path, digits, colors, per_class):
    dm = ColorMNISTDataModule(
        data_dir=str(tmp_path),
        digits=digits,
        colors=colors,
        color_mode="random",
        train_per_class=5,
        test_per_class=0,
        real_world_per_class=0,
        probe_per_class=per_class,
        image_size=32,
        eval_batch_size=200,
        seed=2024,
    )
    return dm.dataloader("probe_set"), dm.class_names, dm.color_names


def test_embedded_probe_sees_digits_and_colors_on_new_data(tmp_path):
    clip = load_clip({"embedded": "colordigits"})
    assert clip.image_size == 32 and sum(p.numel() for p in clip.model.parameters()) < 10e6
    with torch.no_grad():
        two = zeroshot_accuracy(clip, *_fresh(tmp_path, [5, 8], ["red", "green"], 150))
        ten = zeroshot_accuracy(
            clip, *_fresh(tmp_path, list(range(10)), ["red", "green", "blue", "yellow", "cyan", "magenta"], 30)
        )
    assert two["digit_acc"] >= 0.95 and two["color_acc"] >= 0.95, two
    assert ten["digit_acc"] >= 0.8 and ten["color_acc"] >= 0.9, ten


def test_embedded_scenes_probe_sees_digits_colours_and_backgrounds_on_new_data(tmp_path):
    from xai_lightning.data import SceneDigitsDataModule

    clip = load_clip({"embedded": "scenedigits"})
    dm = SceneDigitsDataModule(
        data_dir=str(tmp_path),
        digits=list(range(10)),
        colors=["red", "green", "blue", "yellow"],
        background_mode="random",
        train_per_class=5,
        test_per_class=0,
        real_world_per_class=0,
        probe_per_class=30,
        image_size=32,
        eval_batch_size=150,
        seed=2024,
    )
    with torch.no_grad():
        acc = zeroshot_accuracy(
            clip, dm.dataloader("probe_set"), dm.class_names, dm.color_names, background_names=dm.background_names
        )
    assert acc["digit_acc"] >= 0.9 and acc["color_acc"] >= 0.95 and acc["background_acc"] >= 0.95, acc


def test_export_keeps_the_tokens_of_the_captions_the_checkpoint_trained_on():
    from xai_lightning.clip.__main__ import caption_names

    from_datamodule = {
        "hyper_parameters": {"class_names": [], "color_names": []},
        "datamodule_hyper_parameters": {
            "digits": [5, 8],
            "colors": ["red", {"teal": [0, 1, 1]}],
            "backgrounds": ["dots"],
        },
    }
    assert caption_names(from_datamodule) == [["5", "8"], ["red", "teal"], ["dots"]]
    own = {"hyper_parameters": {"class_names": ["3"], "color_names": ["blue"]}}
    assert caption_names(own) == [["3"], ["blue"], []]
    with pytest.raises(ValueError, match="names neither its classes and colours"):
        caption_names({"hyper_parameters": {}})


def test_probe_file_roundtrip(tmp_path):
    clip = tiny_clip(seed=3)
    path = str(tmp_path / "probe.pt")
    save_probe_clip(path, clip, TINY_CLIP_CFG, half=False)
    again = load_clip(path)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clip.encode_image(clip.preprocess(x)), again.encode_image(again.preprocess(x)))
        assert torch.equal(clip.encode_text(["a red digit"]), again.encode_text(["a red digit"]))


def test_missing_weights_offline_fail_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(FileNotFoundError) as err:
        load_clip({"model": "RN50", "pretrained": "openai", "cache_dir": str(tmp_path)})
    assert time.time() - t0 < 10
    msg = str(err.value)
    assert "RN50/openai" in msg and str(tmp_path) in msg and "checkpoint:" in msg and "download" in msg


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"embedded": "imagenet"}, "unknown embedded CLIP 'imagenet'; available: colordigits"),
        ({"model": "RN50", "pretrained": "laion9b"}, "unknown pretrained tag 'laion9b' for 'RN50'; available: openai"),
        ({"model": "RN51"}, "unknown open_clip model 'RN51'"),
        ({"modle": "RN50"}, "unknown CLIP spec keys"),
        ({"checkpoint": "/nonexistent/clip.pt"}, "does not exist"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_clip(spec)


@pytest.mark.parametrize("name", ["colordigits", "scenedigits"])
def test_words_an_embedded_probe_never_learnt_are_an_error_naming_them(name):
    """Untrained token rows embedded 'a photo of a bird on water.' and '... on land.' alike (cosine 1.000 for
    the scenes CLIP): a caption with such words is refused, naming them."""
    from xai_lightning.clip import load_clip

    clip = load_clip({"embedded": name})
    known = clip.encode_text(["a photo of a red digit.", "a photo of a digit with the value 5."])
    assert known.shape[0] == 2
    with pytest.raises(ValueError, match=r"never learnt the word\(s\) \['bird', 'land'"):
        clip.encode_text(["a photo of a bird on land."])
