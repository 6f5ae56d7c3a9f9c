"""The probe CLIP: the model (``model``), its file format (``files``), loading it by spec (``loading``: the
embedded domain probe, open_clip weights by name + tag, a local checkpoint), zero-shot accuracy
(``zeroshot``) and ``python -m xai_lightning.clip download|export``."""

from xai_lightning.clip.files import load_probe_file, save_probe_clip
from xai_lightning.clip.loading import EMBEDDED, SPEC_KEYS, cached_pretrained, load_clip
from xai_lightning.clip.model import OPENAI_MEAN, OPENAI_STD, ProbeCLIP, build_open_clip, clip_preprocess
from xai_lightning.clip.zeroshot import (
    attribute_hits,
    background_text,
    zeroshot_accuracy,
    zeroshot_hits,
    zeroshot_text,
)

__all__ = [
    "load_probe_file",
    "save_probe_clip",
    "EMBEDDED",
    "SPEC_KEYS",
    "cached_pretrained",
    "load_clip",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "ProbeCLIP",
    "build_open_clip",
    "clip_preprocess",
    "attribute_hits",
    "background_text",
    "zeroshot_accuracy",
    "zeroshot_hits",
    "zeroshot_text",
]
