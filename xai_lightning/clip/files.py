"""The self-contained probe CLIP file (config + fp16 weights) and reading CLIPModule checkpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xai_lightning.clip.model import ProbeCLIP, build_open_clip
from xai_lightning.io import atomic_write, load_file

TOKENS = "token_embedding.weight"


def save_probe_clip(
    path: str,
    clip: ProbeCLIP,
    model_cfg: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    half: bool = True,
    token_rows: Sequence[int] | None = None,
) -> None:
    """Writes a self-contained probe CLIP file (config + weights, fp16 by default), atomically.

    ``token_rows``: keep only these rows of the token embedding (the tokens of the captions the probe was
    trained on; every other row is all zeros when loaded). A small probe's 49,408-token embedding is most of
    its file, and rows it never trained are its random initialisation, not knowledge."""
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in clip.model.state_dict().items()}
    rows = None
    if token_rows is not None:
        rows = torch.as_tensor(sorted(set(int(t) for t in token_rows)), dtype=torch.long)
        state[TOKENS] = state[TOKENS][rows].clone()
    data = {
        "format": "xai_lightning.probe_clip/1",
        "model_cfg": dict(model_cfg),
        "state_dict": state,
        "image_size": clip.image_size,
        "mean": clip.mean.flatten().tolist(),
        "std": clip.std.flatten().tolist(),
        "context_length": clip.context_length,
        "meta": dict(meta or {}),
        "token_rows": rows,
        "vocab_size": int(clip.model.state_dict()[TOKENS].shape[0]),
    }
    atomic_write(path, lambda f: torch.save(data, f))


def load_probe_file(path: str, name: str) -> ProbeCLIP:
    data = load_file(path, "probe CLIP")
    if data.get("format", "").startswith("xai_lightning.probe_clip"):
        model = build_open_clip(data["model_cfg"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()}
        if data.get("token_rows") is not None:
            full = torch.zeros(data["vocab_size"], state[TOKENS].shape[1])
            full[data["token_rows"]] = state[TOKENS]
            state[TOKENS] = full
        model.load_state_dict(state)
        rows = data.get("token_rows")
        return ProbeCLIP(
            model, data["image_size"], data["mean"], data["std"], data["context_length"], name=name, vocabulary=rows
        )
    if "state_dict" in data and "hyper_parameters" in data and "model_cfg" in data["hyper_parameters"]:
        hp = data["hyper_parameters"]  # a CLIPModule Lightning checkpoint
        model = build_open_clip(hp["model_cfg"])
        model.load_state_dict({k[len("model.") :]: v for k, v in data["state_dict"].items() if k.startswith("model.")})
        return ProbeCLIP(
            model,
            hp["model_cfg"]["vision_cfg"]["image_size"],
            context_length=hp["model_cfg"]["text_cfg"]["context_length"],
            name=name,
        )
    raise ValueError(
        f"{path}: not a probe CLIP file or CLIPModule checkpoint; for open_clip weights of a "
        f"built-in architecture use {{model: RN50, checkpoint: {path}}}"
    )
