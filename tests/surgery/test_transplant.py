"""Matching, transplant and hooks on a real (tiny, random) open_clip CLIP."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.tiny import TinyCNN, random_images, tiny_clip
from xai_lightning.surgery import (
    CrossMoments,
    SurgeryPipeline,
    build_plan,
    capture,
    count_forward_hooks,
    match,
    matching_scores,
    resolve_concepts,
    resolve_layers,
    transplant,
)

CLIP_LAYERS = ["visual.layer1", "visual.layer2", "visual.layer3", "visual.layer4"]


def _clip_acts(clip, images):
    with capture(clip.model, CLIP_LAYERS) as acts, torch.no_grad():
        clip.encode_image(clip.preprocess(images))
    return dict(acts)


def _self_plan(clip, images, swap_fraction=1.0):
    m = CrossMoments()
    for chunk in images.split(8):
        acts = _clip_acts(clip, chunk)
        m.update(acts, acts)
    return build_plan(m, "argmax", swap_fraction)


def _sims(clip, images, text):
    with torch.no_grad():
        emb = torch.nn.functional.normalize(clip.encode_image(clip.preprocess(images)), dim=-1)
    return emb @ text.T


def test_clip_matched_to_itself_is_identity_and_transplant_is_a_no_op():
    clip = tiny_clip()
    images = random_images(24)
    plan = _self_plan(clip, images)
    valid = plan.c_valid
    assert valid.sum() > 0.5 * len(valid)
    assert torch.equal(plan.matching.source[valid], torch.arange(len(valid))[valid])
    assert torch.allclose(plan.matching.score[valid], torch.ones(int(valid.sum())), atol=1e-5)
    assert (plan.matching.source[~valid] == -1).all()  # dead channels are never matched
    text = torch.nn.functional.normalize(clip.encode_text(["a red digit", "a green digit", "a five"]), dim=-1)
    maps = _clip_acts(clip, images)
    before = _sims(clip, images, text)
    with transplant(clip.model, plan, maps, CLIP_LAYERS):
        after = _sims(clip, images, text)
    assert torch.allclose(before, after, atol=1e-5)


def test_full_swap_makes_all_layers_equal_last_layer_only():
    """swap_fraction=1.0 replaces a whole stage, so swapping layers 1..4 equals swapping layer 4 alone."""
    clip, cnn = tiny_clip(), TinyCNN().eval()
    images = random_images(16, seed=1)
    s_layers = resolve_layers(cnn, "convs")
    m = CrossMoments()
    with capture(cnn, s_layers) as s_acts, torch.no_grad():
        cnn(images)
        s_maps = dict(s_acts)
    m.update(s_maps, _clip_acts(clip, images))
    plan = build_plan(m, "argmax", 1.0)
    text = torch.nn.functional.normalize(clip.encode_text(["a red digit", "a five"]), dim=-1)
    with transplant(clip.model, plan, s_maps, CLIP_LAYERS):
        all_four = _sims(clip, images, text)
    with transplant(clip.model, plan, s_maps, CLIP_LAYERS[-1:]):
        last_only = _sims(clip, images, text)
    assert torch.allclose(all_four, last_only, atol=1e-6)
    # ... and it does change CLIP (the swap is not a no-op here)
    assert (all_four - _sims(clip, images, text)).abs().max() > 1e-4  # 100x the equality tolerance
    # with a partial swap, earlier layers do propagate (some live layer4 channels keep CLIP's values)
    partial = plan.with_swap_fraction(0.25)
    last = partial.clip_slices()[CLIP_LAYERS[-1]]
    assert (partial.c_valid[last] & ~partial.swap[last]).any()
    with transplant(clip.model, partial, s_maps, CLIP_LAYERS):
        p_all = _sims(clip, images, text)
    with transplant(clip.model, partial, s_maps, CLIP_LAYERS[-1:]):
        p_last = _sims(clip, images, text)
    assert (p_all - p_last).abs().max() > 1e-4


def test_hooks_removed_after_exception_and_after_scoring():
    clip, cnn = tiny_clip(), TinyCNN().eval()
    images = random_images(8, seed=2)
    base = count_forward_hooks(clip.model), count_forward_hooks(cnn)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(cnn, resolve_layers(cnn, "convs")):
            with transplant(clip.model, _self_plan(clip, images), _clip_acts(clip, images), CLIP_LAYERS):
                assert count_forward_hooks(clip.model) == base[0] + 4
                raise RuntimeError("boom")
    assert (count_forward_hooks(clip.model), count_forward_hooks(cnn)) == base

    captions = resolve_concepts({"shape": {"attribute": "digit", "template": "the digit {}"}}, {"digit": ["5", "8"]})
    pipe = SurgeryPipeline(cnn, clip, captions, "convs", CLIP_LAYERS, null_draws=2)
    pipe.fit_batch(images)
    pipe.fit_finish()
    seen = []
    original = clip.encode_image

    def spy(x):
        seen.append(count_forward_hooks(clip.model))
        return original(x)

    clip.encode_image = spy
    pipe.score_batch(images, torch.zeros(1, len(images), dtype=torch.long))
    # whole layers swapped: one CLIP forward (reading the last stage), the transplant and the 2 null draws finish
    # from that stage's output; nothing is left hooked
    assert seen == [base[0] + 1]
    assert count_forward_hooks(clip.model) == base[0]
    partial = SurgeryPipeline(cnn, clip, captions, "convs", CLIP_LAYERS, null_draws=1, swap_fraction=0.5)
    partial.fit_batch(images)
    partial.fit_finish()
    seen.clear()
    partial.score_batch(images, torch.zeros(1, len(images), dtype=torch.long))
    assert seen == [base[0], base[0] + 4, base[0] + 4]  # a partial swap propagates: every layer, cumulatively


def test_finishing_from_the_last_stage_equals_a_full_forward_with_the_transplant_hooked():
    clip, cnn = tiny_clip(), TinyCNN().eval()
    images = random_images(24, seed=5)
    captions = resolve_concepts({"shape": {"attribute": "digit", "template": "the digit {}"}}, {"digit": ["5", "8"]})
    pipe = SurgeryPipeline(cnn, clip, captions, "convs", CLIP_LAYERS, null_draws=3)
    pipe.fit_batch(images)
    pipe.fit_finish()
    fast_sims, fast_null = pipe.similarities(images)
    clip.tail = lambda layer, x: None  # no shortcut: every variant is a full forward with hooks
    full_sims, full_null = pipe.similarities(images)
    torch.testing.assert_close(fast_sims, full_sims, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_null, full_null, rtol=0, atol=1e-6)
    with torch.no_grad():  # and the plain level is plain CLIP
        plain = torch.nn.functional.normalize(clip.encode_image(clip.preprocess(images)), dim=-1) @ pipe.text_features.T
    torch.testing.assert_close(fast_sims[0], plain, rtol=0, atol=1e-6)


def test_pipeline_scores_equal_direct_matching_scores():
    """The pipeline's Z is exactly matching_scores on the same activations (no extra math)."""
    clip, cnn = tiny_clip(), TinyCNN().eval()
    images = random_images(20, seed=3)
    captions = resolve_concepts({"shape": {"attribute": "digit", "template": "the digit {}"}}, {"digit": ["1", "2"]})
    pipe = SurgeryPipeline(cnn, clip, captions, "convs", "stages", null_draws=1)
    s_batches, c_batches = [], []
    for chunk in images.split(7):
        pipe.fit_batch(chunk)
        with capture(cnn, pipe.standalone_layers) as acts, torch.no_grad():
            cnn(chunk)
            s_batches.append(dict(acts))
        c_batches.append(_clip_acts(clip, chunk))
    plan = pipe.fit_finish()
    z = matching_scores(s_batches, c_batches)
    direct = match(z, plan.s_valid, plan.c_valid)
    assert torch.equal(plan.matching.score, direct.score)
    assert torch.equal(plan.matching.source, direct.source)


def test_unknown_layer_lists_available_names():
    clip = tiny_clip()
    with pytest.raises(ValueError, match=r"unknown layer 'visual.layer5'.*visual.layer4"):
        resolve_layers(clip.model, ["visual.layer5"])


def test_reference_models_are_seeded_constructor_builds_and_leave_the_rng_alone():
    from xai_lightning.surgery import reference_models

    torch.manual_seed(0)
    start = TinyCNN()
    state = torch.get_rng_state()
    a = reference_models(TinyCNN, [3, 4], start=start)
    b = reference_models(TinyCNN, [3])
    assert torch.equal(torch.get_rng_state(), state)
    assert len(a) == 3 and a[0] is not start and not any(m.training for m in a)
    for k, v in start.state_dict().items():
        assert torch.equal(a[0].state_dict()[k], v), k  # the start, copied
        assert torch.equal(a[1].state_dict()[k], b[0].state_dict()[k]), k  # same seed, same network
        assert not torch.equal(a[1].state_dict()[k], a[2].state_dict()[k]), k  # another seed, another one


def test_a_reinitialised_resnet_has_the_constructors_weight_statistics_not_reset_parameters():
    """torchvision initialises ResNet convs with kaiming_normal(fan_out); nn.Conv2d.reset_parameters() draws
    kaiming_uniform(a=sqrt(5)) over fan_in: per layer the std differs by a factor 0.5-2.5. The references
    are built by the constructor, so their per-layer weight std matches a fresh model's."""
    from xai_lightning.models import ClassifierModule
    from xai_lightning.surgery import reference_models

    (ref,) = reference_models(lambda: ClassifierModule(num_classes=2, backbone="resnet18"), [7])
    torch.manual_seed(123)
    fresh = ClassifierModule(num_classes=2, backbone="resnet18")
    reset = ClassifierModule(num_classes=2, backbone="resnet18")
    for m in reset.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    ratios_fresh, ratios_reset = [], []
    for w, f, r in zip(ref.net.parameters(), fresh.net.parameters(), reset.net.parameters(), strict=True):
        if w.dim() == 4 and w.numel() > 5000:  # convs large enough for a stable std
            ratios_fresh.append(w.std().item() / f.std().item())
            ratios_reset.append(w.std().item() / r.std().item())
    assert all(0.9 < x < 1.1 for x in ratios_fresh), ratios_fresh
    assert max(abs(x - 1) for x in ratios_reset) > 0.4, ratios_reset


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("src,dst", [((112, 112), (8, 8)), ((56, 56), (7, 7)), ((13, 17), (5, 6)), ((20, 9), (7, 12))])
def test_antialiased_resize_equals_torch_kernel_at_any_factor(mode, src, dst):
    """The matrix form (used on every device: CUDA's kernel refuses 112 -> 8) equals torch's CPU kernel."""
    from xai_lightning.surgery import resize_antialiased

    x = torch.randn(2, 3, *src, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.interpolate(x, size=dst, mode=mode, align_corners=False, antialias=True)
    torch.testing.assert_close(resize_antialiased(x, dst, mode), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(resize_antialiased(x.float(), dst, mode), ref.float(), rtol=0, atol=2e-6)
