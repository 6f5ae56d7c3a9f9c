"""``python -m xai_lightning.clip download|export``: pre-download open_clip weights; export a trained probe."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from xai_lightning.clip.files import load_probe_file, save_probe_clip
from xai_lightning.clip.loading import cached_pretrained, load_clip
from xai_lightning.io import load_file

log = logging.getLogger("xai_lightning.clip")


def caption_names(ckpt: dict) -> list[list[str]]:
    """(class, colour, background names) a CLIPModule checkpoint trained on: its own hyperparameters, else its
    datamodule's (``digits``, ``colors``, ``backgrounds``), as the module takes them from the datamodule."""
    from xai_lightning.data.colorize import resolve_colors

    hp, dm = ckpt.get("hyper_parameters", {}), ckpt.get("datamodule_hyper_parameters", {})
    classes = list(hp.get("class_names") or [str(d) for d in dm.get("digits", [])])
    colors = list(hp.get("color_names") or (resolve_colors(list(dm["colors"]))[0] if dm.get("colors") else []))
    backgrounds = list(hp.get("background_names") or dm.get("backgrounds") or [])
    if not classes or not colors:
        raise ValueError(
            "--caption-tokens-only: the checkpoint names neither its classes and colours nor its datamodule's "
            "digits and colors"
        )
    return [classes, colors, backgrounds]


def caption_tokens(ckpt: dict, clip) -> list[int]:
    """Token ids of every caption a CLIPModule (or WorldCLIPModule: its vocabulary) checkpoint was trained on."""
    from xai_lightning.models.clip_module import all_captions

    vocabulary = (ckpt.get("hyper_parameters") or {}).get("vocabulary")
    if vocabulary:
        from xai_lightning.clip.vocabulary import load_vocabulary

        captions = load_vocabulary(vocabulary).captions() + ["a photo of a digit."]
    else:
        captions = sorted(all_captions(*caption_names(ckpt)))
    tokens = clip.tokenizer(sorted(captions))
    return sorted(set(tokens.flatten().tolist()))


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
    ex.add_argument(
        "--caption-tokens-only",
        action="store_true",
        help="keep only the token embedding rows of the captions the probe was trained on (a much smaller file)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.cmd == "download":
        clip = load_clip({"model": args.model, "pretrained": args.pretrained, "cache_dir": args.cache_dir})
        path, _, _ = cached_pretrained(args.model, args.pretrained, args.cache_dir)
        log.info(f"ok: {clip.name} cached at {path}")
        return
    ckpt = load_file(args.checkpoint, "CLIPModule checkpoint")
    clip = load_probe_file(args.checkpoint, os.path.basename(args.out))
    meta = {
        "source_checkpoint": os.path.basename(args.checkpoint),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "hyper_parameters": ckpt.get("hyper_parameters", {}),
    }
    rows = caption_tokens(ckpt, clip) if args.caption_tokens_only else None
    save_probe_clip(args.out, clip, ckpt["hyper_parameters"]["model_cfg"], meta, token_rows=rows)
    n = sum(p.numel() for p in clip.model.parameters())
    log.info(f"wrote {args.out}: {n / 1e6:.2f}M parameters, {os.path.getsize(args.out) / 2**20:.1f} MiB (fp16)")


if __name__ == "__main__":
    _main()
