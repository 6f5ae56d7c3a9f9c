"""Surgery into a ViT tower: a block's tokens seen as maps on their patch grid, and written back there."""

from __future__ import annotations

import torch

from tests.helpers.tiny import TinyCNN, random_images
from xai_lightning.clip import ProbeCLIP, build_open_clip
from xai_lightning.surgery import SurgeryPipeline, capture, resolve_concepts, resolve_layers
from xai_lightning.surgery.layers import as_maps, into_tokens, patch_grid

TINY_VIT_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 6, "width": 24, "patch_size": 8, "head_width": 12},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_vit_clip(seed: int = 0) -> ProbeCLIP:
    torch.manual_seed(seed)
    return ProbeCLIP(build_open_clip(TINY_VIT_CFG), 32, context_length=16, name="tiny-vit")


def test_tokens_are_maps_on_their_patch_grid_and_go_back_unchanged():
    tokens = torch.randn(3, 1 + 16, 24)  # a class token and a 4 x 4 grid
    assert patch_grid(17) == 4 and patch_grid(197) == 14 and patch_grid(50) == 7 and patch_grid(5) == 2
    maps = as_maps("block", tokens)
    assert maps.shape == (3, 24, 4, 4)
    assert torch.equal(maps[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])  # row 1, column 2: token 1 + 6
    channels = torch.tensor([2, 5])
    back = into_tokens(tokens, channels, maps[:, channels] + 1.0)
    assert torch.equal(back[:, 0], tokens[:, 0])  # the class token is never touched
    assert torch.equal(back[:, 1:, channels], tokens[:, 1:, channels] + 1.0)
    keep = [c for c in range(24) if c not in (2, 5)]
    assert torch.equal(back[:, :, keep], tokens[:, :, keep]) and not torch.equal(back, tokens)


def test_the_surgery_runs_into_a_vit_tower():
    clip, cnn = tiny_vit_clip(), TinyCNN().eval()
    stages = resolve_layers(clip.model, "stages")
    assert stages == [f"visual.transformer.resblocks.{i}" for i in (0, 1, 3, 4)]  # evenly spaced before the last
    images = random_images(12, seed=3)
    with capture(clip.model, stages) as acts, torch.no_grad():
        clip.encode_image(clip.preprocess(images))
    assert {tuple(a.shape) for a in acts.values()} == {(12, 24, 4, 4)}
    captions = resolve_concepts(
        {"shape": {"attribute": "digit", "template": "a digit {}"}}, {"digit": ["five", "eight"]}
    )
    pipe = SurgeryPipeline(cnn, clip, captions, "convs", "stages", null_draws=2)
    pipe.fit_batch(images)
    plan = pipe.fit_finish()
    assert plan.clip == [(name, 24, (4, 4)) for name in stages]
    sims, null = pipe.similarities(images)
    assert torch.isfinite(sims).all() and torch.isfinite(null).all()
    assert (sims[1] - sims[0]).abs().max() > 1e-4  # the transplant changed what CLIP sees
