"""Load the probe CLIP: the embedded domain probe, open_clip weights by name + tag, or a local checkpoint.

Specs (a dict, as written in configs)::

    {embedded: colordigits}                                  # shipped in xai_lightning/assets, offline
    {embedded: scenedigits}                                  # the same for digits over background textures
    {model: RN50, pretrained: openai, cache_dir: ~/.cache/clip}   # open_clip download (cache checked first)
    {model: RN50, checkpoint: /path/RN50.pt}                 # open_clip weights already on disk
    {checkpoint: /path/probe.pt}                             # saved by `save_probe_clip` or a CLIPModule .ckpt

Offline, a missing download fails at once with what was looked for and where, never a retry storm:
the local caches are checked first and ``HF_HUB_OFFLINE=1`` is respected.

Pre-download on a machine with internet (e.g. a cluster login node)::

    python -m xai_lightning.clip download --model RN50 --pretrained openai --cache-dir /shared/clip
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from xai_lightning.clip.files import load_probe_file
from xai_lightning.clip.model import OPENAI_MEAN, OPENAI_STD, ProbeCLIP
from xai_lightning.net import reachable

log = logging.getLogger(__name__)

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")
EMBEDDED = {
    "colordigits": os.path.join(ASSETS, "colordigits_clip.pt"),  # digits and their colours
    "scenedigits": os.path.join(ASSETS, "scenedigits_clip.pt"),  # digits, colours and background textures
    "digitworld": os.path.join(ASSETS, "digitworld_clip.pt"),  # the nine families of the digit world
}
SPEC_KEYS = ("embedded", "model", "pretrained", "cache_dir", "checkpoint", "image_size")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def cached_pretrained(model: str, tag: str, cache_dir: str | None) -> tuple[str | None, list[str], dict]:
    """(local weight file or None, places looked at, open_clip's pretrained cfg) — no network."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(
            f"unknown pretrained tag {tag!r} for {model!r}; available: {', '.join(tags) or 'none'} "
            f"(open_clip.list_pretrained() lists all)"
        )
    looked: list[str] = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" -> default names; "org/repo/file.bin"
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for fname in names:
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            looked.append(f"hf://{repo}/{fname} in {cache_dir or 'the Hugging Face cache'}")
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit, looked, cfg
    if cfg.get("url"):
        local = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        looked.append(local)
        if os.path.isfile(local):
            return local, looked, cfg
    return None, looked, cfg


def _open_clip_by_name(
    model: str, pretrained: str | None, checkpoint: str | None, cache_dir: str | None, image_size: int | None
) -> ProbeCLIP:
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model!r}; CNN towers include RN50, RN101, RN50x4, RN50x16, "
            f"convnext_base_w; all: open_clip.list_models()"
        )
    cfg: dict = {}
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"CLIP checkpoint {checkpoint!r} does not exist")
        path = checkpoint
        if pretrained:
            cfg = open_clip.get_pretrained_cfg(model, pretrained)
    elif pretrained is None:
        path = None
    else:
        path, looked, cfg = cached_pretrained(model, pretrained, cache_dir)
        if path is None:
            target = cfg.get("hf_hub") and "https://huggingface.co" or cfg.get("url", "")
            if _hub_offline() or not reachable(target):
                why = "HF_HUB_OFFLINE is set" if _hub_offline() else f"{urlparse(target).hostname} is unreachable"
                raise FileNotFoundError(
                    f"CLIP weights {model}/{pretrained} are not cached and cannot be downloaded ({why}). Looked in: "
                    f"{'; '.join(looked)}. Pre-download them where there is internet with "
                    f"`python -m xai_lightning.clip download --model {model} --pretrained {pretrained} "
                    f"--cache-dir DIR` and pass cache_dir: DIR, or "
                    f"pass a local file as {{model: {model}, pretrained: {pretrained}, checkpoint: /path/to/weights}}."
                )
            from open_clip.pretrained import download_pretrained

            log.info(f"downloading CLIP weights {model}/{pretrained} ...")
            path = download_pretrained(cfg, cache_dir=cache_dir)
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(cfg.get("quick_gelu", False))}
    if image_size:
        kwargs["force_image_size"] = image_size
    clip = open_clip.create_model(model, pretrained=path, **kwargs)
    vision = open_clip.get_model_config(model)["vision_cfg"]
    size = image_size or vision.get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    ctx = open_clip.get_model_config(model)["text_cfg"].get("context_length", 77)
    return ProbeCLIP(
        clip,
        size,
        cfg.get("mean", OPENAI_MEAN),
        cfg.get("std", OPENAI_STD),
        ctx,
        name=f"{model}/{pretrained or os.path.basename(checkpoint or 'random')}",
    )


def load_clip(spec: Mapping[str, Any] | str) -> ProbeCLIP:
    """A ``ProbeCLIP`` from a spec (see module docstring); a plain string is an embedded name or a file."""
    if isinstance(spec, str):
        spec = {"embedded": spec} if spec in EMBEDDED else {"checkpoint": spec}
    spec = dict(spec)
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown CLIP spec keys {sorted(unknown)}; allowed: {', '.join(SPEC_KEYS)}")
    if "embedded" in spec:
        name = spec["embedded"]
        if name not in EMBEDDED:
            raise ValueError(f"unknown embedded CLIP {name!r}; available: {', '.join(EMBEDDED)}")
        if not os.path.isfile(EMBEDDED[name]):
            raise FileNotFoundError(
                f"embedded CLIP {name!r} is missing at {EMBEDDED[name]}; reinstall the package or "
                f"retrain it (README: 'The probe CLIP')"
            )
        return load_probe_file(EMBEDDED[name], f"embedded:{name}")
    if "model" in spec:
        return _open_clip_by_name(
            spec["model"],
            spec.get("pretrained"),
            spec.get("checkpoint"),
            os.path.expanduser(spec["cache_dir"]) if spec.get("cache_dir") else None,
            spec.get("image_size"),
        )
    if "checkpoint" in spec:
        path = spec["checkpoint"]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CLIP checkpoint {path!r} does not exist")
        return load_probe_file(path, os.path.basename(path))
    raise ValueError(f"CLIP spec {spec} needs one of: embedded, model (+ pretrained / checkpoint), checkpoint")
