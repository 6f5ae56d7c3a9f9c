"""Hand-built models whose reliance is known exactly, on probe sets of any design (pure numpy).

A check of the verdict where the truth is not estimated: a *probe design* draws concept values (digit =
class, colour, background) as a user's probe set would hold them (balanced, correlated, class-imbalanced,
with missing labels), and a *hand-built model* predicts from them and from image-level noise (``u``: the
handwriting a real model also reads). Its counterfactual flip rate per concept (change the concept to each
other value, keep everything else, including the noise) is computed exactly per image.

    design = ProbeDesign(images=1000, classes=10, colors=10, backgrounds=4, layout="correlated")
    model = HandBuilt("mixture", concept="color", strength=0.38)
    probe = design.draw(np.random.default_rng(0))
    pred, truth = model.predict(probe), model.flip_rates(probe)   # truth["color"] ~= 0.38 * 0.95

``experiments/validate_verdict.py`` runs the verdict on a grid of these; tests use them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUTS = ("balanced", "correlated", "imbalanced", "missing")
KINDS = ("mixture", "secondary", "and", "two_way", "random", "shape", "constant")
CONCEPTS = ("shape", "color", "background")


@dataclass(frozen=True)
class ProbeDesign:
    """How a probe set's concept values are drawn.

    ``correlated``: the colour is the digit's own (``digit mod colors``) for ``correlation`` of the images,
    else random; ``imbalanced``: half the images are of class 0; ``missing``: every concept value is unknown
    (-1) with probability ``missing`` (the predictions still see the true value).
    """

    images: int
    classes: int = 2
    colors: int = 2
    backgrounds: int = 2
    layout: str = "balanced"
    correlation: float = 0.9
    missing: float = 0.1

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; allowed: {', '.join(LAYOUTS)}")

    @property
    def cards(self) -> dict[str, int]:
        return {"shape": self.classes, "color": self.colors, "background": self.backgrounds}

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``shape`` (the digit = the class), ``color``, ``background``, noise ``u1``/``u2`` in [0, 1), and
        ``observed_<concept>`` (what the probe set's labels say: -1 where missing)."""
        n, k = self.images, self.classes
        if self.layout == "imbalanced":
            digit = rng.choice(k, n, p=np.r_[0.5, np.full(k - 1, 0.5 / (k - 1))])
        else:
            digit = rng.integers(0, k, n)
        color = rng.integers(0, self.colors, n)
        if self.layout == "correlated":
            color = np.where(rng.random(n) < self.correlation, digit % self.colors, color)
        out = {"shape": digit, "color": color, "background": rng.integers(0, self.backgrounds, n)}
        out.update(u1=rng.random(n), u2=rng.random(n))
        for c in CONCEPTS:
            hidden = (rng.random(n) < self.missing) & (self.layout == "missing")
            out[f"observed_{c}"] = np.where(hidden, -1, out[c])
        return out


@dataclass(frozen=True)
class HandBuilt:
    """A model that predicts from concept values and image noise; ``concept`` is the one it may follow.

    Kinds (``p`` = ``strength``; otherwise the prediction is the digit, and a share ``noise`` of images is
    predicted at random whatever their concepts):

    * ``mixture``: a share ``p`` of images (``u1 < p``) is predicted from the concept (value ``v`` -> class
      ``v mod classes``) — the monotone partial shortcut;
    * ``secondary``: value 0 of the concept sends a share ``p`` of its images to class 0 (a red digit -> 0);
    * ``and``: value 0 of the concept *and* a digit in the lower half send a share ``p`` to the next class;
    * ``two_way``: a share ``p`` goes to class ``v`` or ``v + 1`` by the image's noise — not monotone: the
      concept flips every such prediction yet moves no class's share;
    * ``random``: every prediction at random (by the image's noise); ``shape``: the digit; ``constant``: 0.
    """

    kind: str
    concept: str = "color"
    strength: float = 1.0
    noise: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.concept not in CONCEPTS:
            raise ValueError(f"unknown concept {self.concept!r}; allowed: {', '.join(CONCEPTS)}")

    def _rule(self, v: dict[str, np.ndarray], k: int) -> np.ndarray:
        digit, x, hit = v["shape"] % k, v[self.concept], v["u1"] < self.strength
        if self.kind == "mixture":
            return np.where(hit, x % k, digit)
        if self.kind == "secondary":
            return np.where(hit & (x == 0), 0, digit)
        if self.kind == "and":
            return np.where(hit & (x == 0) & (digit < max(k // 2, 1)), (digit + 1) % k, digit)
        if self.kind == "two_way":
            return np.where(hit, (x + (v["u2"] < 0.5)) % k, digit)
        if self.kind == "shape":
            return digit
        return np.zeros_like(digit)

    def predict(self, v: dict[str, np.ndarray], classes: int) -> np.ndarray:
        """[n] predicted class from the true concept values of ``v`` (``ProbeDesign.draw``)."""
        if self.kind == "random":
            return with_noise(v, classes, v["shape"], 1.0)
        return with_noise(v, classes, self._rule(v, classes), self.noise)

    def flip_rates(self, v: dict[str, np.ndarray], design: ProbeDesign) -> dict[str, float]:
        """Per concept, the share of predictions that change when the concept is set to another value (each
        other value equally often), everything else (noise included) kept."""
        return flip_rates(lambda x: self.predict(x, design.classes), v, design.cards)


def with_noise(v: dict[str, np.ndarray], classes: int, pred: np.ndarray, noise: float) -> np.ndarray:
    """``pred``, except a share ``noise`` of the images predicted at random, both by the image's own noise
    ``u2`` (so an edit of a concept keeps which images are random and what they are predicted)."""
    at_random = (v["u2"] * 7919 % 1.0 * classes).astype(np.int64) % classes
    return np.where((v["u2"] * 104729 % 1.0) < noise, at_random, pred)


def flip_rates(predict, v: dict[str, np.ndarray], cards: dict[str, int]) -> dict[str, float]:
    """Per concept of ``cards``, the share of ``predict(v)`` that changes when the concept is set to each other
    value (every other value once), everything else kept: the counterfactual flip rate."""
    base = predict(v)
    out = {}
    for c, card in cards.items():
        flips = np.zeros(len(base))
        for shift in range(1, card):
            flips += predict(dict(v, **{c: (v[c] + shift) % card})) != base
        out[c] = float(flips.mean() / max(card - 1, 1))
    return out
