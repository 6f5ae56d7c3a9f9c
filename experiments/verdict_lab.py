"""What the verdict's validation and calibration share: trained models with their per-image counterfactual
flips, probe sets of any design drawn from a large probe split, and small statistics helpers.

Not a command: ``validate_verdict.py`` and ``calibration.py`` (beside it) import it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import stats

from xai_lightning.data import ColorMNISTDataModule, SceneDigitsDataModule
from xai_lightning.data.colorize import colorize
from xai_lightning.data.loaders import resize
from xai_lightning.data.scenes import SceneDigits
from xai_lightning.verdict import assess
from xai_lightning.verdict.simulate import LAYOUTS

SIZES = (100, 250, 1000, 5000)


# ---- statistics ------------------------------------------------------------------------------------------
def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of k successes in n."""
    if n == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def median_within(errors: list[float], bound: float = 0.05) -> bool:
    """The median error lies within ±``bound``, up to its sampling noise (2 standard errors of a median:
    1.2533 sd / sqrt(reps)): a bias beyond ``bound`` is what fails, not the noise of a few small probe sets."""
    e = np.asarray(errors)
    se = 1.2533 * e.std(ddof=1) / np.sqrt(len(e)) if len(e) > 1 else 0.0
    return bool(abs(float(np.median(e))) <= bound + 2 * se)


def rate(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]" if n else "0/0"


def non_degenerate(pred: np.ndarray, share: float = 0.1) -> bool:
    """At least two classes each take ``share`` of the predictions (a model whose predictions vary)."""
    counts = np.bincount(pred)
    return int((counts >= share * len(pred)).sum()) >= 2


# ---- trained models -------------------------------------------------------------------------------------
@dataclass
class TrainSpec:
    """One trained model: data options (ColorMNISTDataModule / SceneDigitsDataModule) and training."""

    name: str
    digits: list[int]
    colors: list[str]
    data: dict = field(default_factory=dict)  # extra data-module options (conflict_fraction, color_mode, ...)
    scenes: bool = False
    backbone: str = "resnet18"
    epochs: int = 3
    train_per_class: int = 500
    probe_images: int = 10_000  # the probe split the designs are drawn from: twice the largest design
    lr: float = 1e-3


def datamodule(spec: TrainSpec, data_dir: str, seed: int, source: str = "synthetic") -> ColorMNISTDataModule:
    k = len(spec.digits)
    args = dict(
        source=source,
        data_dir=data_dir,
        digits=spec.digits,
        colors=spec.colors,
        train_per_class=spec.train_per_class,
        test_per_class=20,
        real_world_per_class=20,
        probe_per_class=max(spec.probe_images // k, 1),
        image_size=32,
        batch_size=64,
        eval_batch_size=500,
        val_splits=["val", "probe_set"],
        seed=seed,
        **spec.data,
    )
    if spec.scenes:
        return SceneDigitsDataModule(backgrounds=["stripes", "dots", "checks", "waves"][: max(k, 2)], **args)
    return ColorMNISTDataModule(**args)


def quiet_trainer(epochs: int, callbacks=()):
    """A CPU trainer that logs, checkpoints and validates nothing (the experiments measure on their own)."""
    import lightning as L

    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )


def fit_cached(model, dm, path: str, seed: int, epochs: int):
    """Train ``model`` on ``dm`` (seeded) unless ``path`` holds its weights (a plain tensor file); then set up
    ``dm`` and return the model in eval mode."""
    import lightning as L

    if os.path.isfile(path):
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        L.seed_everything(seed, verbose=False)
        quiet_trainer(epochs).fit(model, dm)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(model.state_dict(), path)
    dm.setup()
    return model.eval()


def train(spec: TrainSpec, out: str, seed: int, source: str = "synthetic"):
    """(model in eval mode, set-up data module); the weights are cached as a plain tensor file."""
    from xai_lightning.models import ClassifierModule

    dm = datamodule(spec, os.path.join(out, "data"), seed, source)
    model = ClassifierModule(num_classes=len(spec.digits), backbone=spec.backbone, lr=spec.lr)
    path = os.path.join(out, "models", f"{spec.name}_s{seed}.pt")
    return fit_cached(model, dm, path, seed, spec.epochs), dm


@torch.no_grad()
def predict_classes(model, images: torch.Tensor, batch: int = 500) -> np.ndarray:
    return torch.cat([model(images[i : i + batch]).argmax(-1) for i in range(0, len(images), batch)]).numpy()


def render(data, index: torch.Tensor, source=None, color=None, background=None) -> torch.Tensor:
    """Images of rows ``index``, optionally with other digits' strokes, colours or backgrounds."""
    if isinstance(data, SceneDigits):
        return data.render(index, source=source, color=color, background=background)
    intensity = data.intensity[index if source is None else source]
    color = data.color[index] if color is None else color
    return resize(colorize(intensity, color, data.rgb), data.image_size, data.interpolation)


def _donors(digit: np.ndarray, value: int) -> np.ndarray:
    """For every image, the next image (cyclically, in split order) whose digit is ``value``."""
    have = np.flatnonzero(digit == value)
    at = np.searchsorted(have, np.arange(len(digit)), side="right") % len(have)
    return have[at]


def potential_outcomes(model, data, concepts: dict[str, int]) -> dict[str, np.ndarray]:
    """Per concept, every image's prediction under each value of the concept [N, values] (the image's own
    value where it has one; everything else kept: other digits' strokes in its colour for shape)."""
    index = torch.arange(len(data))
    base = predict_classes(model, render(data, index))
    out = {}
    for concept, card in concepts.items():
        own = _own(data, concept)
        table = np.empty((len(base), card), dtype=np.int64)
        for value in range(card):
            table[:, value] = predict_classes(model, _edited(data, index, concept, value, own))
        table[own >= 0, own[own >= 0]] = base[own >= 0]
        out[concept] = table
    return out


def _own(data, concept: str) -> np.ndarray:
    return {"shape": data.digit_index, "color": data.color, "background": getattr(data, "background", None)}[
        concept
    ].numpy()


def _edited(data, index: torch.Tensor, concept: str, value: int, own: np.ndarray) -> torch.Tensor:
    if concept == "shape":
        return render(data, index, source=torch.as_tensor(_donors(own, value)))
    values = torch.where(torch.as_tensor(own) >= 0, torch.tensor(value), torch.as_tensor(own))
    return render(data, index, **{concept: values})


def flips(model, data, concepts: dict[str, int]) -> dict[str, np.ndarray]:
    """Per image and concept: the share of the concept's other values that change the prediction (every
    other value once, everything else kept)."""
    return {c: flip_share(table, _own(data, c)) for c, table in potential_outcomes(model, data, concepts).items()}


def flip_share(table: np.ndarray, own: np.ndarray) -> np.ndarray:
    """[N] share of the other values whose prediction differs from the image's own value's."""
    card = table.shape[1]
    known = own >= 0
    base = np.where(known, table[np.arange(len(own)), np.maximum(own, 0)], 0)
    changed = (table != base[:, None]).sum(1)
    return np.where(known, changed / max(card - 1, 1), 0.0)


def finite_tv(table: np.ndarray, strata: np.ndarray, own: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The split's own share of predictions that follow a concept, from every image's prediction under each of
    its values: per stratum and value pair, the total variation between the (weighted) predicted-class
    distributions of the stratum's images under value a and under value b, averaged with weights
    ``w_sa + w_sb`` (the stratum's images whose own value is a or b: every image counted once per other value,
    as the verdict's effect and a counterfactual edit to each other value count it; images with an unknown
    value, -1, weigh nothing). It equals the flip rate where the concept moves predictions one way, and is
    below it by the share that flips both ways (which no observational verdict can see)."""
    w = np.ones(len(table)) if weights is None else weights
    k, card = int(table.max()) + 1, table.shape[1]
    num = den = 0.0
    for s in np.unique(strata):
        rows = strata == s
        dist = np.stack([np.bincount(table[rows, v], weights=w[rows], minlength=k) for v in range(card)])
        dist /= w[rows].sum()
        mass = np.bincount(own[rows][own[rows] >= 0], weights=w[rows][own[rows] >= 0], minlength=card)
        for a in range(card):
            for b in range(a + 1, card):
                num += (mass[a] + mass[b]) * 0.5 * np.abs(dist[a] - dist[b]).sum()
                den += mass[a] + mass[b]
    return min(num / den, 1.0)  # a share: the sum's rounding must not leave it above 1


def records(model, data, concepts: dict[str, str]) -> dict[str, np.ndarray]:
    """Predictions, the class labels and each concept's values on a whole split."""
    index = torch.arange(len(data))
    out = {"pred": predict_classes(model, render(data, index)), "target": data.label.numpy()}
    for concept, attribute in concepts.items():
        out[concept] = getattr(data, attribute).numpy()
    return out


# ---- probe designs drawn from a large split ------------------------------------------------------------
def layout_weights(layout: str, digit: np.ndarray, color: np.ndarray, colors: int) -> np.ndarray:
    """Sampling weights over a balanced split that give a probe set of this layout (docs/verdict.md)."""
    w = np.ones(len(digit))
    if layout == "correlated":  # 90% of the images in their digit's own colour
        own = color == digit % colors
        w = np.where(own, 0.9 / max(own.mean(), 1e-9), 0.1 / max((~own).mean(), 1e-9))
    elif layout == "imbalanced":  # half the images of class 0
        zero = digit == 0
        w = np.where(zero, 0.5 / max(zero.mean(), 1e-9), 0.5 / max((~zero).mean(), 1e-9))
    return w / w.sum()


def _pick(rng, w: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(len(w), size=n, replace=n > int((w > 0).sum()), p=w)


def design_weights(w: np.ndarray, n: int, seed: int = 0, draws: int = 200) -> np.ndarray:
    """How often each split image is in a probe set that ``draw_design`` draws (normalised): the population its
    designs are samples of, and the one their truth is computed on. Drawn without replacement, a design of a
    skewed layout is less skewed than ``w`` (a 5,000-image design of a 5,000-image split is the split itself,
    whatever the layout), so the truth is weighted by these inclusion rates, not by ``w``."""
    rng = np.random.default_rng([seed, n])
    counts = sum(np.bincount(_pick(rng, w, n), minlength=len(w)) for _ in range(draws))
    return counts / counts.sum()


def draw_design(rng, rec: dict[str, np.ndarray], n: int, layout: str, colors: int, concepts) -> dict[str, np.ndarray]:
    """A probe set of ``n`` images of ``layout`` from the split's records (without replacement while it can)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    pick = _pick(rng, layout_weights(layout, rec["shape"], rec["color"], colors), n)
    out = {k: v[pick] for k, v in rec.items()}
    if layout == "missing":
        for c in concepts:
            out[c] = np.where(rng.random(n) < 0.1, -1, out[c])
    out["rows"] = pick
    return out


def verdict_of(design: dict, concepts: dict[str, list[str]], classes: int, seed: int):
    """The verdict exactly as the ConceptProbe computes it (its defaults), class labels given."""
    return assess(
        design["pred"], {c: design[c] for c in concepts}, concepts, targets=design["target"], classes=classes, seed=seed
    )


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")


def read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = [
    "SIZES",
    "TrainSpec",
    "asdict",
    "clopper_pearson",
    "design_weights",
    "draw_design",
    "finite_tv",
    "fit_cached",
    "flip_share",
    "flips",
    "potential_outcomes",
    "predict_classes",
    "quiet_trainer",
    "layout_weights",
    "median_within",
    "non_degenerate",
    "rate",
    "read_jsonl",
    "records",
    "train",
    "verdict_of",
    "write_jsonl",
]
