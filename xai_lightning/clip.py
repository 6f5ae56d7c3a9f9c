"""Load the probe CLIP: the embedded domain probe, open_clip weights by name + tag, or a local checkpoint.

Specs (a dict, as written in configs)::

    {embedded: colordigits}                                  # shipped in xai_lightning/assets, offline
    {model: RN50, pretrained: openai, cache_dir: ~/.cache/clip}   # open_clip download (cache checked first)
    {model: RN50, checkpoint: /path/RN50.pt}                 # open_clip weights already on disk
    {checkpoint: /path/probe.pt}                             # saved by `save_probe_clip` or a CLIPModule .ckpt

Offline, a missing download fails at once with what was looked for and where, never a retry storm:
the local caches are checked first and ``HF_HUB_OFFLINE=1`` is respected.

Pre-download on a machine with internet (e.g. a cluster login node)::

    python -m xai_lightning.clip download --model RN50 --pretrained openai --cache-dir /shared/clip
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.io import atomic_write
from xai_lightning.surgery.transplant import resize_antialiased

log = logging.getLogger(__name__)

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
EMBEDDED = {"colordigits": os.path.join(ASSETS, "colordigits_clip.pt")}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SPEC_KEYS = ("embedded", "model", "pretrained", "cache_dir", "checkpoint", "image_size")


class ProbeCLIP(nn.Module):
    """An open_clip ``CLIP`` with its tokenizer and input normalization (the surgery's ``ClipLike``).

    ``model`` is the module whose layers are hooked (``visual.layer1`` ... for ResNet towers).
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        context_length: int = 77,
        name: str = "clip",
    ) -> None:
        super().__init__()
        import open_clip

        self.model = model.eval()
        self.image_size = int(image_size)
        self.name = name
        self.context_length = int(context_length)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> ProbeCLIP:  # the probe CLIP is frozen: always eval
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> CLIP input: resized (bicubic) to its image size and normalized."""
        return clip_preprocess(images, self.image_size, self.mean, self.std)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.visual.parameters()).dtype
        return self.model.encode_image(x.to(dtype)).float()

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(captions)).to(self.mean.device)
        return self.model.encode_text(tokens).float()

    def tail(self, layer: str, x: torch.Tensor) -> torch.Tensor | None:
        """The image embedding from the output ``x`` of ``layer`` onward, when ``layer`` is the last stage of a
        ResNet tower (only the attention pool remains): a transplant into the last stage then needs no new
        forward through the stages before it. None for any other layer or tower."""
        visual = self.model.visual
        if layer != "visual.layer4" or not hasattr(visual, "attnpool") or not hasattr(visual, "layer4"):
            return None
        return visual.attnpool(x.to(next(visual.parameters()).dtype)).float()


# ---- building blocks -------------------------------------------------------------------------------
def clip_preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> resized (bicubic, anti-aliased when shrinking) to size x size, normalized."""
    x = images.float()
    if x.shape[-1] > size or x.shape[-2] > size:
        x = resize_antialiased(x, (size, size), "bicubic").clamp_(0.0, 1.0)
    elif x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    return (x - mean) / std


def build_open_clip(model_cfg: Mapping[str, Any]) -> nn.Module:
    """An open_clip ``CLIP`` from a config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``)."""
    from open_clip.model import CLIP

    return CLIP(**copy.deepcopy(dict(model_cfg)))


def save_probe_clip(
    path: str, clip: ProbeCLIP, model_cfg: Mapping[str, Any], meta: Mapping[str, Any] | None = None, half: bool = True
) -> None:
    """Writes a self-contained probe CLIP file (config + weights, fp16 by default), atomically."""
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in clip.model.state_dict().items()}
    data = {
        "format": "xai_lightning.probe_clip/1",
        "model_cfg": dict(model_cfg),
        "state_dict": state,
        "image_size": clip.image_size,
        "mean": clip.mean.flatten().tolist(),
        "std": clip.std.flatten().tolist(),
        "context_length": clip.context_length,
        "meta": dict(meta or {}),
    }
    atomic_write(path, lambda f: torch.save(data, f))


def _load_probe_file(path: str, name: str) -> ProbeCLIP:
    data = torch.load(path, map_location="cpu", weights_only=False)
    if data.get("format", "").startswith("xai_lightning.probe_clip"):
        model = build_open_clip(data["model_cfg"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()})
        return ProbeCLIP(model, data["image_size"], data["mean"], data["std"], data["context_length"], name=name)
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


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


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
            if _hub_offline() or not _reachable(target):
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
        return _load_probe_file(EMBEDDED[name], f"embedded:{name}")
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
        return _load_probe_file(path, os.path.basename(path))
    raise ValueError(f"CLIP spec {spec} needs one of: embedded, model (+ pretrained / checkpoint), checkpoint")


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xai_lightning.clip", description="CLIP weights for the probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    dl = sub.add_parser("download", help="download open_clip weights into a cache dir (run where there is internet)")
    dl.add_argument("--model", required=True)
    dl.add_argument("--pretrained", required=True)
    dl.add_argument("--cache-dir", default=None)
    ex = sub.add_parser("export", help="turn a CLIPModule checkpoint into a self-contained fp16 probe CLIP file")
    ex.add_argument("checkpoint")
    ex.add_argument("out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.cmd == "download":
        clip = load_clip({"model": args.model, "pretrained": args.pretrained, "cache_dir": args.cache_dir})
        path, _, _ = cached_pretrained(args.model, args.pretrained, args.cache_dir)
        log.info(f"ok: {clip.name} cached at {path}")
        return
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    clip = _load_probe_file(args.checkpoint, os.path.basename(args.out))
    meta = {
        "source_checkpoint": os.path.basename(args.checkpoint),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "hyper_parameters": ckpt.get("hyper_parameters", {}),
    }
    save_probe_clip(args.out, clip, ckpt["hyper_parameters"]["model_cfg"], meta)
    n = sum(p.numel() for p in clip.model.parameters())
    log.info(f"wrote {args.out}: {n / 1e6:.2f}M parameters, {os.path.getsize(args.out) / 2**20:.1f} MiB (fp16)")


if __name__ == "__main__":
    _main()


@torch.no_grad()
def zeroshot_accuracy(
    clip: ProbeCLIP,
    batches,
    class_names: Sequence[str],
    color_names: Sequence[str],
    templates: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Zero-shot digit and colour accuracy with the probe's caption templates on dict batches
    (``image``, ``label``, ``color``; gray images count for digits only), plus the cosine range."""
    from xai_lightning.surgery.concepts import DEFAULT_CONCEPTS

    templates = templates or {
        "digit": DEFAULT_CONCEPTS["shape"]["template"],
        "color": DEFAULT_CONCEPTS["color"]["template"],
    }
    digit_text = F.normalize(clip.encode_text([templates["digit"].format(c) for c in class_names]), dim=-1)
    color_text = F.normalize(clip.encode_text([templates["color"].format(c) for c in color_names]), dim=-1)
    hits = torch.zeros(4, dtype=torch.float64)
    lo, hi = float("inf"), float("-inf")
    for batch in batches:
        emb = F.normalize(clip.encode_image(clip.preprocess(batch["image"].to(clip.mean.device))), dim=-1)
        sd, sc = emb @ digit_text.T, emb @ color_text.T
        colored = batch["color"].to(emb.device) >= 0
        hits += torch.tensor(
            [
                (sd.argmax(-1).cpu() == batch["label"]).sum().item(),
                len(emb),
                ((sc.argmax(-1) == batch["color"].to(emb.device)) & colored).sum().item(),
                colored.sum().item(),
            ],
            dtype=torch.float64,
        )
        both = torch.cat([sd, sc], dim=1)
        lo, hi = min(lo, float(both.min())), max(hi, float(both.max()))
    return {
        "digit_acc": float(hits[0] / hits[1]),
        "color_acc": float(hits[2] / max(hits[3], 1)),
        "images": int(hits[1]),
        "cos_min": lo,
        "cos_max": hi,
    }
