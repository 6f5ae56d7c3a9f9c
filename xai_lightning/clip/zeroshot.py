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


BACKGROUND_TEMPLATE = "a photo of a digit on a {} background."  # the scenes configs' background concept


def background_text(encode_text, background_names: Sequence[str], template: str = BACKGROUND_TEMPLATE) -> torch.Tensor:
    """Normalised text embeddings [B, E] of the background captions."""
    with torch.no_grad():
        return F.normalize(encode_text([template.format(b) for b in background_names]).float(), dim=-1)


def attribute_hits(emb: torch.Tensor, text: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[2] (hits, images with a known value) of a zero-shot choice among ``text`` [V, E]; -1 targets skipped."""
    known = target >= 0
    return torch.stack([(((emb @ text.T).argmax(-1) == target) & known).sum(), known.sum()]).double()


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
    background_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Zero-shot digit and colour accuracy with the probe's caption templates on dict batches (``image``,
    ``digit_index`` or ``label``, ``color``; gray images count for digits only), plus the cosine range; with
    ``background_names`` (scenes batches carry ``background``) also the background accuracy."""
    digit_text, color_text = zeroshot_text(clip.encode_text, class_names, color_names, templates)
    bg_text = background_text(clip.encode_text, background_names) if background_names else None
    bg_hits = torch.zeros(2, dtype=torch.float64)
    hits = torch.zeros(4, dtype=torch.float64)
    lo, hi = float("inf"), float("-inf")
    for batch in batches:
        emb = F.normalize(clip.encode_image(clip.preprocess(batch["image"].to(clip.mean.device))), dim=-1)
        digit = batch.get("digit_index", batch["label"]).to(emb.device)
        hits += zeroshot_hits(emb, digit_text, color_text, digit, batch["color"].to(emb.device)).cpu()
        sims = [emb @ digit_text.T, emb @ color_text.T]
        if bg_text is not None:
            bg_hits += attribute_hits(emb, bg_text, batch["background"].to(emb.device)).cpu()
            sims.append(emb @ bg_text.T)
        both = torch.cat(sims, dim=1)
        lo, hi = min(lo, float(both.min())), max(hi, float(both.max()))
    out = {
        "digit_acc": float(hits[0] / hits[1]),
        "color_acc": float(hits[2] / max(hits[3], 1)),
        "images": int(hits[1]),
        "cos_min": lo,
        "cos_max": hi,
    }
    if bg_text is not None:
        out["background_acc"] = float(bg_hits[0] / max(bg_hits[1], 1))
    return out
