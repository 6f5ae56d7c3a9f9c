"""Procedurally drawn handwritten-style digits (no download, deterministic from a seed).

Each digit class is a small set of pen strokes (arcs, lines, Bezier curves) in a unit box. Every
sample perturbs the stroke geometry (per-point jitter, smooth wobble, random shape parameters),
applies a random affine map (rotation, shear, anisotropic scale, translation) and rasterizes the
strokes with a random pen thickness and anti-aliased edges onto a 28x28 canvas, MNIST style: the
digit is about 20 px tall and centred by its centre of mass.

The result is a uint8 intensity array like MNIST's. The only randomness is a
``numpy.random.Generator`` built from the seed, so the same seed gives bit-identical digits on every
machine and every DDP rank.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CANVAS = 28
_Y_UP = np.array([1.0, -1.0])  # templates are drawn with y pointing up


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int = 24) -> np.ndarray:
    """Points on an elliptic arc from angle t0 to t1 (degrees, counter-clockwise positive)."""
    t = np.deg2rad(np.linspace(t0, t1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _line(*points: tuple[float, float]) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    out = [pts[0:1]]
    for a, b in zip(pts[:-1], pts[1:]):  # subdivide so that wobble bends straight strokes too
        t = np.linspace(0.0, 1.0, 9)[1:, None]
        out.append(a + t * (b - a))
    return np.concatenate(out)


def _bezier(p0, p1, p2, n: int = 20) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _zero(rng: np.random.Generator) -> list[np.ndarray]:
    start = _u(rng, 60, 120)
    return [_arc(0.3, 0.5, _u(rng, 0.2, 0.3), _u(rng, 0.44, 0.5), start, start + _u(rng, 350, 380), 40)]


def _one(rng: np.random.Generator) -> list[np.ndarray]:
    top = (0.3 + _u(rng, -0.02, 0.12), 1.0)
    strokes = [_line(top, (0.3 + _u(rng, -0.12, 0.02), 0.0))]
    if rng.random() < 0.45:  # serif flag
        strokes.append(_line((top[0] - _u(rng, 0.1, 0.2), top[1] - _u(rng, 0.1, 0.22)), top))
    if rng.random() < 0.2:  # base
        strokes.append(_line((0.12, 0.0), (0.5, 0.0)))
    return strokes


def _two(rng: np.random.Generator) -> list[np.ndarray]:
    r = _u(rng, 0.24, 0.3)
    arc = _arc(0.3, 0.72, r, _u(rng, 0.22, 0.28), _u(rng, 150, 180), _u(rng, -50, -25), 24)
    foot = (_u(rng, 0.0, 0.06), _u(rng, 0.0, 0.06))
    return [np.concatenate([arc, _line(tuple(arc[-1]), foot)[1:]]), _line(foot, (_u(rng, 0.5, 0.65), 0.0))]


def _three(rng: np.random.Generator) -> list[np.ndarray]:
    upper = _arc(0.28, 0.75, _u(rng, 0.2, 0.27), 0.24, _u(rng, 140, 170), -90, 22)
    lower = _arc(0.28, 0.27, _u(rng, 0.25, 0.32), 0.27, 90, _u(rng, -170, -140), 24)
    return [np.concatenate([upper, lower])]


def _four(rng: np.random.Generator) -> list[np.ndarray]:
    x_stem = _u(rng, 0.38, 0.48)
    y_bar = _u(rng, 0.3, 0.42)
    if rng.random() < 0.7:  # open four: diagonal, bar, stem
        return [
            _line((x_stem - _u(rng, 0.0, 0.08), 1.0), (0.0, y_bar), (0.62, y_bar)),
            _line((x_stem, _u(rng, 0.7, 0.95)), (x_stem + _u(rng, -0.05, 0.05), 0.0)),
        ]
    return [  # closed-looking four: left vertical, bar, full stem
        _line((0.05, 1.0), (0.02, y_bar), (0.62, y_bar)),
        _line((x_stem, 1.0), (x_stem, 0.0)),
    ]


def _five(rng: np.random.Generator) -> list[np.ndarray]:
    top_y = 1.0
    left = (_u(rng, 0.05, 0.12), top_y)
    bowl = _arc(0.3, 0.3, _u(rng, 0.24, 0.3), _u(rng, 0.26, 0.31), _u(rng, 125, 145), _u(rng, -160, -135), 26)
    return [
        _line((_u(rng, 0.5, 0.62), top_y + _u(rng, -0.03, 0.03)), left),
        np.concatenate([_line(left, tuple(bowl[0])), bowl[1:]]),
    ]


def _six(rng: np.random.Generator) -> list[np.ndarray]:
    loop_r = _u(rng, 0.22, 0.28)
    loop = _arc(0.3, 0.27, loop_r, 0.27, 180, 180 - 360 - _u(rng, 0, 30), 30)
    sweep = _bezier((_u(rng, 0.42, 0.56), 1.0), (_u(rng, -0.02, 0.12), _u(rng, 0.7, 0.85)), (0.3 - loop_r, 0.27))
    return [np.concatenate([sweep, loop[1:]])]


def _seven(rng: np.random.Generator) -> list[np.ndarray]:
    corner = (_u(rng, 0.55, 0.65), 1.0)
    strokes = [_line((_u(rng, 0.0, 0.05), 1.0 - _u(rng, 0.0, 0.1)), corner, (_u(rng, 0.12, 0.3), 0.0))]
    if rng.random() < 0.2:  # crossbar
        strokes.append(_line((0.2, 0.5), (0.55, 0.5)))
    return strokes


def _eight(rng: np.random.Generator) -> list[np.ndarray]:
    s0, s1 = _u(rng, 0, 360), _u(rng, 0, 360)
    return [
        _arc(0.3 + _u(rng, -0.03, 0.03), 0.75, _u(rng, 0.17, 0.23), _u(rng, 0.22, 0.25), s0, s0 + 370, 30),
        _arc(0.3, 0.27, _u(rng, 0.24, 0.3), _u(rng, 0.25, 0.28), s1, s1 + 370, 32),
    ]


def _nine(rng: np.random.Generator) -> list[np.ndarray]:
    r = _u(rng, 0.22, 0.28)
    loop = _arc(0.3, 0.72, r, _u(rng, 0.24, 0.28), 0, 360 + _u(rng, 0, 20), 30)
    tail = _bezier((0.3 + r, 0.72), (0.3 + r + _u(rng, -0.05, 0.03), 0.35), (_u(rng, 0.35, 0.55), 0.0), 16)
    return [loop, tail]


_DIGITS: dict[int, Callable[[np.random.Generator], list[np.ndarray]]] = {
    d: f for d, f in enumerate((_zero, _one, _two, _three, _four, _five, _six, _seven, _eight, _nine))
}


def _strokes(digit: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Pen strokes of one digit in a box x in [0, 0.6], y in [0, 1] (y up), with random shape parameters."""
    if digit not in _DIGITS:
        raise ValueError(f"unknown digit {digit!r}; allowed: 0-9")
    return _DIGITS[digit](rng)


def _wobble(points: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth random displacement along the stroke plus small per-point jitter."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    out = points.copy()
    for axis in range(2):
        for _ in range(2):
            freq = rng.uniform(0.5, 2.5)
            out[:, axis] += amplitude * rng.normal() * np.sin(2 * np.pi * freq * s + rng.uniform(0, 2 * np.pi))
    return out + rng.normal(scale=amplitude * 0.15, size=out.shape)


def _affine(rng: np.random.Generator) -> np.ndarray:
    """A random 2x2 map: rotation, shear (slant) and anisotropic scale."""
    angle = np.deg2rad(rng.normal(0.0, 8.0))
    shear = rng.normal(0.15, 0.15)  # handwriting leans right on average
    sx, sy = rng.uniform(0.8, 1.15), rng.uniform(0.9, 1.1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])


_PX = np.arange(CANVAS) + 0.5
_GRID = np.stack(np.meshgrid(_PX, _PX, indexing="xy"), axis=-1).reshape(-1, 2)  # [784, 2] (x, y) pixel centres


def _rasterize(strokes: list[np.ndarray], thickness: float) -> np.ndarray:
    """Anti-aliased strokes of the given pen diameter (pixels) -> float image [28, 28] in [0, 1]."""
    a = np.concatenate([s[:-1] for s in strokes])  # [S, 2] segment starts
    b = np.concatenate([s[1:] for s in strokes])  # [S, 2] segment ends
    ab = b - a
    apx = _GRID[:, None, 0] - a[None, :, 0]  # [P, S]
    apy = _GRID[:, None, 1] - a[None, :, 1]
    t = np.clip((apx * ab[:, 0] + apy * ab[:, 1]) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    dx, dy = apx - t * ab[:, 0], apy - t * ab[:, 1]
    d = np.sqrt((dx * dx + dy * dy).min(axis=1))  # [P] distance to the pen path
    ink = np.clip(thickness / 2.0 + 0.5 - d, 0.0, 1.0)
    return ink.reshape(CANVAS, CANVAS)


def render_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One handwritten-style digit as a uint8 [28, 28] intensity image."""
    strokes = [_wobble(s, rng, amplitude=0.025) for s in _strokes(digit, rng)]
    m = _affine(rng)
    strokes = [(s - [0.3, 0.5]) @ m.T for s in strokes]  # centre the box, then deform
    pts = np.concatenate(strokes)
    height = rng.uniform(17.0, 21.0)
    span = max(np.ptp(pts[:, 1]), 1e-6)
    scale = height / span
    strokes = [s * scale * _Y_UP for s in strokes]  # to pixels, y down
    thickness = rng.uniform(1.6, 3.4)
    # Centre by the centre of mass of the ink (as MNIST does: the length-weighted centroid of the pen
    # path), with a small random offset.
    seg_a = np.concatenate([s[:-1] for s in strokes])
    seg_b = np.concatenate([s[1:] for s in strokes])
    length = np.linalg.norm(seg_b - seg_a, axis=1)
    centroid = ((seg_a + seg_b) / 2 * length[:, None]).sum(0) / max(length.sum(), 1e-12)
    offset = CANVAS / 2 + 0.5 - centroid + rng.normal(0.0, 0.7, size=2)  # MNIST: mass centre at pixel 14
    img = _rasterize([s + offset for s in strokes], thickness)
    return np.round(img * 255.0).astype(np.uint8)


def generate_digits(
    digits: list[int], per_class: int, seed: int | list[int], progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` digits of each class in ``digits``, interleaved by class.

    Returns:
        images: uint8 [N, 28, 28]; labels: int64 [N] digit values. Sample i of class d depends only on
        (seed, d, i), so asking for more samples or other classes never changes the ones already drawn.
        ``progress(n)`` is called every 100 digits of a class.
    """
    seed_seq = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
    images = np.empty((len(digits) * per_class, CANVAS, CANVAS), dtype=np.uint8)
    labels = np.empty(len(digits) * per_class, dtype=np.int64)
    for k, d in enumerate(digits):
        for i in range(per_class):
            rng = np.random.default_rng([*seed_seq, int(d), i])
            images[i * len(digits) + k] = render_digit(int(d), rng)
            labels[i * len(digits) + k] = d
            if progress is not None and i % 100 == 99:
                progress(100)
    return images, labels
