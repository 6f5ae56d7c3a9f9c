"""ClassifierModule: normalization and the grayscale pre-processor inside forward, retraining, errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tests.helpers.trainers import quiet_trainer
from xai_lightning.data import colorize
from xai_lightning.models import ClassifierModule


def test_forward_normalizes_inside_and_grayscale_removes_color():
    torch.manual_seed(0)
    m = ClassifierModule(num_classes=2, backbone="resnet18", normalization="clip", input_transform="grayscale").eval()
    intensity = torch.rand(3, 32, 32)
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    red = colorize(intensity, torch.tensor([0, 0, 0]), rgb)
    green = colorize(intensity, torch.tensor([1, 1, 1]), rgb)
    with torch.no_grad():
        assert torch.allclose(m(red), m(green), atol=1e-6)  # the debiasing pre-processor sees no colour
        gray = intensity[:, None].expand(-1, 3, -1, -1)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        assert torch.allclose(m(red), m.net((gray - mean) / std), atol=1e-6)
    plain = ClassifierModule(num_classes=2, backbone="resnet18").eval()
    with torch.no_grad():
        assert not torch.allclose(plain(red), plain(green), atol=1e-3)


def test_init_checkpoint_retrains_from_saved_weights(tmp_path):
    torch.manual_seed(1)
    src = ClassifierModule(num_classes=2, backbone="resnet18")
    path = str(tmp_path / "biased.ckpt")
    torch.save({"state_dict": src.state_dict()}, path)
    dst = ClassifierModule(num_classes=2, backbone="resnet18", input_transform="grayscale", init_checkpoint=path)
    assert all(torch.equal(a, b) for a, b in zip(src.net.state_dict().values(), dst.net.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit backbone 'resnet34'"):
        ClassifierModule(num_classes=2, backbone="resnet34", init_checkpoint=path)
    # pretrained on other classes: every weight but the head is loaded, the head is fresh
    ten = ClassifierModule(num_classes=10, backbone="resnet18", init_checkpoint=path)
    assert ten.net.fc.out_features == 10
    body = [k for k in src.net.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(src.net.state_dict()[k], ten.net.state_dict()[k]) for k in body)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClassifierModule(init_checkpoint=str(tmp_path / "nope.ckpt"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone": "resnet5"}, "unknown backbone 'resnet5'; allowed: simple_cnn, alexnet, convnext_base"),
        ({"backbone": "inception_v3"}, "unknown backbone 'inception_v3' \\(its training output has auxiliary heads\\)"),
        ({"input_transform": "sepia"}, "allowed: none, grayscale"),
        ({"normalization": "cifar"}, "allowed: imagenet, clip, none"),
        ({"optimizer": "lbfgs"}, "allowed: adam, adamw, sgd"),
        ({"backbone": "resnet18", "weights": "IMAGENET_V9"}, "allowed: DEFAULT, IMAGENET1K_V1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassifierModule(**kwargs)


def test_logs_the_documented_keys(tmp_path):
    from tests.helpers.modules import tiny_datamodule

    L.seed_everything(0)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(ClassifierModule(num_classes=2, backbone="resnet18"), tiny_datamodule(str(tmp_path)))
    keys = set(trainer.callback_metrics)
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "real_world/acc", "probe_set/acc"} <= keys
    trainer.test(trainer.lightning_module, tiny_datamodule(str(tmp_path)))
    assert {"test/acc", "real_world/acc"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("backbone", ["simple_cnn", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"])
def test_any_torchvision_classifier_or_the_plain_cnn_trains_and_the_probe_presets_find_layers(backbone):
    from xai_lightning.surgery import resolve_layers

    m = ClassifierModule(num_classes=3, backbone=backbone)
    x = torch.rand(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()  # the new head is wired to the body
    assert m(x).shape == (4, 3)
    convs, stages = resolve_layers(m, "convs"), resolve_layers(m, "stages")
    assert len(convs) >= 4 and len(stages) >= 4
    assert all(isinstance(m.get_submodule(n), torch.nn.Conv2d) for n in convs)
