"""``discover``: which concept a model's decisions follow, in a notebook (plain PyTorch, no Lightning).

    from xai_lightning import discover
    v = discover(model, images, labels={"color": colours, "shape": digits}, targets=digits)
    print(v.table()); v.outcome, v.reason, v.relies, v.effects["color"].value

``images``: a tensor [N, 3, H, W] (what the model's forward takes) or an iterable of such batches;
``labels``: concept -> one value per image (names or integers; ``None``, ``""`` or NaN = unknown);
``targets``: the images' class labels, when known (effects are then matched on the class: a probe set
whose attribute goes with the class cannot fake a shortcut). The ``ConceptProbe`` callback runs the same
``assess`` on the predictions it gathers during validation.

**Concepts nobody labelled.** With ``vocabulary`` (families -> values -> captions; ``"digitworld"`` is the
default one) the probe CLIP (``clip``: a spec for ``xai_lightning.clip.load_clip``, default the embedded
``digitworld`` probe) reads every family the labels lack off the images: the verdict then names shortcuts
nobody annotated. ``labels=None`` reads every family from captions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xai_lightning.verdict.assess import Verdict, assess


def _unknown(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def encode(column: Sequence[Any], names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(value index per image, -1 unknown; value names) of one concept's labels. Integers index ``names``
    when given (else they are their own names); anything else is a name (sorted, as strings)."""
    items = list(column.tolist() if hasattr(column, "tolist") else column)
    if names is not None:
        names = [str(n) for n in names]
        lookup = {n: i for i, n in enumerate(names)}
        out = []
        for v in items:
            if _unknown(v) or (isinstance(v, (int, np.integer)) and v < 0):
                out.append(-1)
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                if v >= len(names):
                    raise ValueError(f"value index {v} outside the {len(names)} names {names}")
                out.append(int(v))
            elif str(v) in lookup:
                out.append(lookup[str(v)])
            else:
                raise ValueError(f"{v!r} is not one of {names}")
        return np.asarray(out, dtype=np.int64), names
    known = sorted({str(v) for v in items if not _unknown(v) and not (isinstance(v, (int, np.integer)) and v < 0)})
    lookup = {n: i for i, n in enumerate(known)}
    index = [-1 if _unknown(v) or (isinstance(v, (int, np.integer)) and v < 0) else lookup[str(v)] for v in items]
    return np.asarray(index, dtype=np.int64), known


def read_captions(batches: list[torch.Tensor], vocabulary: Any, clip: Any, min_confidence: float, skip: set[str]):
    """The vocabulary's families (those not in ``skip``) read off the images by the probe CLIP."""
    from xai_lightning.clip import load_clip
    from xai_lightning.clip.vocabulary import caption_labels, load_vocabulary

    vocab = load_vocabulary(vocabulary)
    vocab = vocab.restrict([f for f in vocab.families if f not in skip])
    probe = (
        load_clip(clip if clip is not None else {"embedded": "digitworld"})
        if not hasattr(clip, "encode_image")
        else clip
    )
    return caption_labels(probe, batches, vocab, min_confidence)


def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
        return
    for batch in images:
        yield batch["image"] if isinstance(batch, Mapping) else batch


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256
) -> tuple[np.ndarray, int]:
    """(predicted class [N]: the argmax of the forward's class scores, in eval mode; the number of classes).
    The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        preds, width = [], 0
        for x in _batches(images, batch_size):
            scores = model(x.to(device))
            if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
                raise ValueError(
                    f"the model's forward must return class scores [batch, classes], got "
                    f"{type(scores).__name__}{'' if not isinstance(scores, torch.Tensor) else tuple(scores.shape)}"
                )
            preds.append(scores.argmax(-1).cpu())
            width = scores.shape[1]
    finally:
        model.train(was_training)
    return (torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)), width


def _class_indices(targets: Sequence[Any], classes: int | Sequence[str] | None) -> np.ndarray:
    """Class index per image (-1 unknown): where ``classes`` names the classes, a name or an index of them
    (``encode``: with classes ["5", "8"], "8" is class 1); otherwise an integer or its text."""
    items = [
        int(t) if isinstance(t, float) and t.is_integer() else t
        for t in (targets.tolist() if hasattr(targets, "tolist") else targets)
    ]
    if classes is not None and not isinstance(classes, (int, str)):
        try:
            return encode(items, classes)[0]
        except ValueError as e:
            raise ValueError(f"targets: {e}") from None
    out = []
    for t in items:
        if _unknown(t):
            out.append(-1)
        elif isinstance(t, (int, np.integer)) or (isinstance(t, str) and t.strip().lstrip("-").isdigit()):
            out.append(int(t))
        else:
            raise ValueError(f"targets: {t!r} is not a class index (or pass classes=[names])")
    return np.asarray(out, dtype=np.int64)


def discover(
    model: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    labels: Mapping[str, Sequence[Any]] | None = None,
    targets: Sequence[Any] | None = None,
    value_names: Mapping[str, Sequence[str]] | None = None,
    classes: int | Sequence[str] | None = None,
    batch_size: int = 256,
    vocabulary: Any = None,
    clip: Any = None,
    min_confidence: float = 0.5,
    **options: Any,
) -> Verdict:
    """Which concepts the model's predictions follow on these images (module docstring).

    Args:
        model: any classifier whose forward returns class scores [batch, classes].
        images: [N, 3, H, W] or an iterable of batches (tensors, or dicts with ``image``), in a fixed order.
        labels: concept -> one value per image (in the same order); None: every concept from captions.
        targets: the images' class labels, when known: class indices, or names of ``classes``.
        value_names: concept -> names of its values, when ``labels`` holds integer indices.
        classes: number of classes or their names (default: the model's output width).
        vocabulary: families -> values -> captions (a YAML file, a mapping, or ``"digitworld"``): the families
            ``labels`` lacks are read off the images by the probe CLIP.
        clip: the probe CLIP (a loaded one, or a spec for ``xai_lightning.clip.load_clip``; default
            ``{"embedded": "digitworld"}``) that reads them.
        min_confidence: a caption reading below this probability leaves the value unknown.
        options: ``assess``'s (``draws``, ``permutations``, ``min_effect``, ``alpha``, ``seed``).
    """
    labels = dict(labels or {})
    if not labels and vocabulary is None and clip is None:
        vocabulary = "digitworld"
    batches = list(_batches(images, batch_size))  # read twice: by the model and, for captions, by the CLIP
    pred, width = predict(model, batches, batch_size)
    values, names = {}, {}
    for concept, column in labels.items():
        try:
            values[concept], names[concept] = encode(column, (value_names or {}).get(concept))
        except ValueError as e:
            raise ValueError(f"labels[{concept!r}]: {e}") from None
        if len(values[concept]) != len(pred):
            raise ValueError(f"labels[{concept!r}] has {len(values[concept])} values for {len(pred)} images")
    if vocabulary is not None or clip is not None:
        read = read_captions(batches, vocabulary, clip, min_confidence, skip=set(labels))
        values.update(read.values)
        names.update(read.names)
    if not values:
        raise ValueError("no concepts: give labels, or a vocabulary to read concepts from captions")
    target = None if targets is None else _class_indices(targets, classes)
    return assess(pred, values, names, targets=target, classes=classes or width, **options)
