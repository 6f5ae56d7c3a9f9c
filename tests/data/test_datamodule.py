"""ColorMNISTDataModule: determinism, colour statistics per mode, splits, cache and bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from xai_lightning.data import GRAY, ColorMNISTDataModule, assign_colors, colorize, resolve_colors
from xai_lightning.data.synthetic import generate_digits

SMALL = dict(train_per_class=40, test_per_class=10, real_world_per_class=30, probe_per_class=12, image_size=32)


def _arrays(dm: ColorMNISTDataModule) -> dict[str, torch.Tensor]:
    dm.setup()
    return {
        f"{s}.{k}": getattr(ds, k) for s, ds in dm.datasets.items() for k in ("intensity", "digit", "label", "color")
    }


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = _arrays(ColorMNISTDataModule(data_dir=str(tmp_path / "a"), seed=1, **SMALL))
    b = _arrays(ColorMNISTDataModule(data_dir=str(tmp_path / "b"), seed=1, **SMALL))
    c = _arrays(ColorMNISTDataModule(data_dir=str(tmp_path / "c"), seed=2, **SMALL))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["train.intensity"], c["train.intensity"])
    assert not torch.equal(a["real_world.color"], c["real_world.color"])


def test_split_sizes_classes_and_folds(tmp_path):
    dm = ColorMNISTDataModule(data_dir=str(tmp_path), digits=[1, 4, 7], colors=["red", "green", "blue"], **SMALL)
    dm.setup()
    sizes = {s: len(ds) for s, ds in dm.datasets.items()}
    assert sizes == {"train": 3 * 32, "val": 3 * 8, "test": 30, "real_world": 90, "probe_set": 36}
    for split in ("train", "val", "probe_set"):
        labels = dm.datasets[split].label
        assert torch.bincount(labels).tolist() == [len(labels) // 3] * 3  # stratified
        assert torch.equal(dm.datasets[split].digit, torch.tensor([1, 4, 7])[labels])
    assert dm.class_names == ["1", "4", "7"] and dm.num_classes == 3
    folds = [
        ColorMNISTDataModule(data_dir=str(tmp_path), digits=[1, 4, 7], colors=["red", "green", "blue"], fold=k, **SMALL)
        for k in range(5)
    ]
    vals = [f.fold_mask(dm.datasets["train"].label.numpy().repeat(1)) for f in folds]
    assert np.all(np.sum(vals, axis=0) == 1)  # every sample in exactly one validation fold


def test_biased_colors_follow_class_with_strength(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20000)
    colors = assign_colors(labels, 2, "biased", 0.7, rng)
    follows = (colors == labels).mean()
    assert follows == pytest.approx(0.7 + 0.3 / 2, abs=0.01)  # else a random palette colour, maybe the same
    full = ColorMNISTDataModule(data_dir=str(tmp_path), bias_strength=1.0, **SMALL)
    full.setup()
    for split in ("train", "val", "test"):
        ds = full.datasets[split]
        assert torch.equal(ds.color, ds.label)  # every 5 red, every 8 green


def test_real_world_and_probe_colors_independent_of_class(tmp_path):
    dm = ColorMNISTDataModule(
        data_dir=str(tmp_path),
        train_per_class=5,
        test_per_class=5,
        real_world_per_class=600,
        probe_per_class=600,
        image_size=28,
        seed=4,
    )
    dm.setup()
    for split in ("real_world", "probe_set"):
        ds = dm.datasets[split]
        table = torch.zeros(2, 2)
        for lab, col in zip(ds.label.tolist(), ds.color.tolist()):
            table[lab, col] += 1
        expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
        chi2 = float(((table - expected) ** 2 / expected).sum())
        assert chi2 < 10.83, (split, table)  # df=1, p=0.001: no dependence between colour and class


def test_colorize_puts_intensity_into_the_color_and_gray_everywhere():
    names, rgb = resolve_colors(["red", "green", {"teal": [0.0, 0.5, 1.0]}])
    assert names == ["red", "green", "teal"]
    x = torch.rand(4, 28, 28)
    img = colorize(x, torch.tensor([0, 1, GRAY, 2]), torch.from_numpy(rgb))
    assert torch.equal(img[0, 0], x[0]) and img[0, 1:].abs().sum() == 0
    assert torch.equal(img[1, 1], x[1]) and img[1, [0, 2]].abs().sum() == 0
    assert all(torch.equal(img[2, c], x[2]) for c in range(3))
    assert torch.allclose(img[3, 1], 0.5 * x[3]) and torch.equal(img.amax(1), x)  # max recovers the intensity


def test_grayscale_mode_dev_splits_gray_real_world_colored(tmp_path):
    dm = ColorMNISTDataModule(data_dir=str(tmp_path), color_mode="grayscale", **SMALL)
    dm.setup()
    assert (dm.datasets["train"].color == GRAY).all() and (dm.datasets["test"].color == GRAY).all()
    assert (dm.datasets["real_world"].color >= 0).all()
    batch = next(iter(dm.dataloader("train")))
    assert batch["image"].shape == (len(dm.datasets["train"]), 3, 32, 32)  # 64 < batch_size
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 1]) and torch.equal(
        batch["image"][:, 1], batch["image"][:, 2]
    )
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0


def test_cache_is_keyed_on_parameters_and_written_atomically(tmp_path):
    a = ColorMNISTDataModule(data_dir=str(tmp_path), **SMALL)
    b = ColorMNISTDataModule(data_dir=str(tmp_path), bias_strength=0.9, **SMALL)
    assert a.cache_path() != b.cache_path()
    a.prepare_data()
    files = os.listdir(tmp_path / "cache")
    assert files == [os.path.basename(a.cache_path())]  # no temporary left behind
    again = ColorMNISTDataModule(data_dir=str(tmp_path), **SMALL)
    assert all(torch.equal(x, y) for x, y in zip(_arrays(a).values(), _arrays(again).values()))


def test_npz_source_and_its_errors(tmp_path):
    images, labels = generate_digits([3, 5, 8], 30, seed=9)
    path = str(tmp_path / "digits.npz")
    np.savez(path, images=images, labels=labels)
    dm = ColorMNISTDataModule(
        source=path,
        data_dir=str(tmp_path),
        digits=[3, 8],
        train_per_class=10,
        test_per_class=5,
        real_world_per_class=5,
        probe_per_class=5,
        image_size=28,
    )
    dm.setup()
    used = torch.cat([dm.datasets[s].intensity.flatten(1) for s in ("train", "val", "test", "real_world", "probe_set")])
    assert len(torch.unique(used, dim=0)) == len(used) == 2 * 25  # disjoint splits
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, pixels=images)
    with pytest.raises(ValueError, match=r"missing array\(s\) \['images', 'labels'\]"):
        ColorMNISTDataModule(source=bad, data_dir=str(tmp_path), **SMALL).setup()
    with pytest.raises(ValueError, match="ask for 45 per class"):
        ColorMNISTDataModule(
            source=path,
            data_dir=str(tmp_path),
            digits=[3, 5],
            train_per_class=30,
            test_per_class=5,
            real_world_per_class=5,
            probe_per_class=5,
        ).setup()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"digits": [5, 11]}, r"each must be in 0-9 \(got \[11\]\)"),
        ({"colors": []}, "colors is empty"),
        ({"colors": ["red", "mauve"]}, "unknown color 'mauve'; allowed names: red, green"),
        ({"bias_strength": 1.5}, r"bias_strength=1.5 is outside \[0, 1\]"),
        ({"color_mode": "sepia"}, "allowed: biased, random, grayscale"),
        ({"source": "kmnist"}, "allowed: mnist, emnist, synthetic or a path to an .npz"),
        ({"val_splits": ["val", "holdout"]}, "allowed entries val, real_world, probe_set"),
    ],
)
def test_bad_input_names_the_value_and_the_allowed_ones(tmp_path, kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ColorMNISTDataModule(data_dir=str(tmp_path), **kwargs)


def test_download_failure_explains_offline_alternatives(tmp_path, monkeypatch):
    import torchvision

    def refuse(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.MNIST, "__init__", refuse)
    dm = ColorMNISTDataModule(source="mnist", data_dir=str(tmp_path), **SMALL)
    with pytest.raises(RuntimeError, match=r"could not download mnist.*--data.source synthetic.*\.npz"):
        dm.prepare_data()


def test_conflict_fraction_plants_an_exact_seeded_number_of_conflicts_per_split(tmp_path):
    kw = dict(
        data_dir=str(tmp_path),
        train_per_class=500,
        test_per_class=250,
        real_world_per_class=5,
        probe_per_class=5,
        image_size=28,
        colors=["red", "green", "blue"],
        digits=[1, 4, 7],
    )
    dm = ColorMNISTDataModule(conflict_fraction=0.02, seed=3, **kw)
    dm.setup()
    for split, n in (("train", 1500), ("test", 750)):
        labels = torch.from_numpy(dm._load_or_generate(write=False)[f"{split}.digit_index"])
        colors = torch.from_numpy(dm._load_or_generate(write=False)[f"{split}.color"])
        assert len(labels) == n and int((colors != labels % 3).sum()) == round(0.02 * n)  # exactly 2%
        assert bool((colors >= 0).all())
    same = ColorMNISTDataModule(conflict_fraction=0.02, seed=3, **kw)
    other = ColorMNISTDataModule(conflict_fraction=0.02, seed=4, **kw)
    same.setup()
    other.setup()
    assert torch.equal(same.datasets["train"].color, dm.datasets["train"].color)  # seeded
    assert not torch.equal(other.datasets["train"].color, dm.datasets["train"].color)
    assert dm.cache_key() != ColorMNISTDataModule(conflict_fraction=0.01, seed=3, **kw).cache_key()
    with pytest.raises(ValueError, match="either bias_strength or conflict_fraction"):
        ColorMNISTDataModule(conflict_fraction=0.02, bias_strength=0.9, **kw)
    with pytest.raises(ValueError, match="needs color_mode 'biased'"):
        ColorMNISTDataModule(conflict_fraction=0.02, color_mode="random", **kw)


def test_random_labels_are_independent_of_digit_and_colour_and_the_digit_stays_readable(tmp_path):
    dm = ColorMNISTDataModule(
        data_dir=str(tmp_path),
        label_mode="random",
        train_per_class=2000,
        test_per_class=5,
        real_world_per_class=5,
        probe_per_class=5,
        image_size=28,
        seed=2,
    )
    dm.setup()
    train = dm.datasets["train"]
    assert torch.equal(train.color, train.digit_index)  # biased colours still follow the digit
    table = torch.zeros(2, 2)
    for lab, d in zip(train.label.tolist(), train.digit_index.tolist()):
        table[lab, d] += 1
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    assert float(((table - expected) ** 2 / expected).sum()) < 10.83  # label independent of digit (and colour)
    assert torch.equal(torch.tensor([5, 8])[train.digit_index], train.digit)
    again = ColorMNISTDataModule(
        data_dir=str(tmp_path / "b"),
        label_mode="random",
        train_per_class=2000,
        test_per_class=5,
        real_world_per_class=5,
        probe_per_class=5,
        image_size=28,
        seed=2,
    )
    again.setup()
    assert torch.equal(again.datasets["train"].label, train.label)  # fixed per image
    assert dm.attribute_keys["digit"] == "digit_index"
    with pytest.raises(ValueError, match="allowed: digit, random"):
        ColorMNISTDataModule(label_mode="shuffled")


def _next_other_digit(digit: list[int]) -> list[int]:
    """The definition, by brute force: the next position (cyclically) with a different digit, else -1."""
    n = len(digit)
    return [next(((i + k) % n for k in range(1, n) if digit[(i + k) % n] != digit[i]), -1) for i in range(n)]


def test_split_donors_are_the_next_other_digit_of_the_split():
    from xai_lightning.data.counterfactuals import split_donors

    g = torch.Generator().manual_seed(4)
    cases = ([0, 1, 0, 1], [0, 0, 0, 1, 1, 2, 0, 0], [2, 2, 2], [], [1, 0], torch.randint(0, 3, (50,), generator=g))
    for digit in cases:
        digit = torch.as_tensor(digit, dtype=torch.long)
        assert split_donors(digit).tolist() == _next_other_digit(digit.tolist())


def test_shape_edits_do_not_depend_on_the_batch(tmp_path):
    """A batch holding one digit (what a DDP rank gets from an alternating split) still finds donors: the
    donor is the split's next image with another digit, drawn in this image's colour."""
    dm = ColorMNISTDataModule(data_dir=str(tmp_path), **SMALL)
    dm.setup()
    data = dm.datasets["probe_set"]
    index = torch.nonzero(data.digit_index == 0).flatten()[:5]  # a batch of one digit only
    batch = {k: torch.stack([data[int(i)][k] for i in index]) for k in ("image", "color", "digit_index", "index")}
    shape_img, found = dm.counterfactuals("probe_set", batch)["shape"]
    donor = torch.tensor(_next_other_digit(data.digit_index.tolist()))[index]
    assert found.all() and (data.digit_index[donor] == 1).all()
    expect = colorize(data.images(donor).amax(dim=1), batch["color"], dm.rgb.float())  # donor's digit, my colour
    assert torch.allclose(shape_img, expect)
    whole = next(iter(dm.dataloader("probe_set", batch_size=len(data))))  # the same images in one batch
    in_whole, _ = dm.counterfactuals("probe_set", whole)["shape"]
    assert torch.allclose(in_whole[index], shape_img)
