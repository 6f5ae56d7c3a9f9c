"""Zero-shot accuracy of a CLIP on digits and colours with the probe's caption templates (one definition,
used by the probe CLIP's trainer and its evaluation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from xai_lightning.captions import DEFAULT_CONCEPTS
from xai_lightning.clip.model import ProbeCLIP


def zeroshot_text(encode_text, class_names: Sequence[str], color_names: Sequence[str], templates=None):
    """(digit text embeddings [D, E], colour text embeddings [C, E]), normalised, from the templates."""
    templates = templates or {
        "digit": DEFAULT_CONCEPTS["shape"]["template"],
        "color": DEFAULT_CONCEPTS["color"]["template"],
    }
    with torch.no_grad():
        digit = F.normalize(encode_text([templates["digit"].format(c) for c in class_names]).float(), dim=-1)
        color = F.normalize(encode_text([templates["color"].format(c) for c in color_names]).float(), dim=-1)
    return digit, color


def zeroshot_hits(
    emb: torch.Tensor, digit_text: torch.Tensor, color_text: torch.Tensor, digit: torch.Tensor, color: torch.Tensor
) -> torch.Tensor:
    """[4] (digit hits, images, colour hits, coloured images) for normalised image embeddings ``emb`` [B, E];
    gray images (colour -1) count for digits only."""
    colored = color >= 0
    return torch.stack(
        [
            ((emb @ digit_text.T).argmax(-1) == digit).sum(),
            torch.tensor(len(emb), device=emb.device),
            (((emb @ color_text.T).argmax(-1) == color) & colored).sum(),
            colored.sum(),
        ]
    ).double()


@torch.no_grad()
def zeroshot_accuracy(
    clip: ProbeCLIP,
    batches,
    class_names: Sequence[str],
    color_names: Sequence[str],
    templates: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Zero-shot digit and colour accuracy with the probe's caption templates on dict batches (``image``,
    ``digit_index`` or ``label``, ``color``; gray images count for digits only), plus the cosine range."""
    digit_text, color_text = zeroshot_text(clip.encode_text, class_names, color_names, templates)
    hits = torch.zeros(4, dtype=torch.float64)
    lo, hi = float("inf"), float("-inf")
    for batch in batches:
        emb = F.normalize(clip.encode_image(clip.preprocess(batch["image"].to(clip.mean.device))), dim=-1)
        digit = batch.get("digit_index", batch["label"]).to(emb.device)
        hits += zeroshot_hits(emb, digit_text, color_text, digit, batch["color"].to(emb.device)).cpu()
        both = torch.cat([emb @ digit_text.T, emb @ color_text.T], dim=1)
        lo, hi = min(lo, float(both.min())), max(hi, float(both.max()))
    return {
        "digit_acc": float(hits[0] / hits[1]),
        "color_acc": float(hits[2] / max(hits[3], 1)),
        "images": int(hits[1]),
        "cos_min": lo,
        "cos_max": hi,
    }
