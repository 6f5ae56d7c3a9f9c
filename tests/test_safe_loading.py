"""Files a user names are data: a pickle that would run code is refused (and does not run), with one line
that names the file and how to allow a file the user trusts."""

from __future__ import annotations

import pytest
import torch

from xai_lightning.errors import CheckpointError


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: code from the file would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(path, marker) -> str:
    torch.save({"state_dict": {"net.fc.weight": torch.zeros(2, 2)}, "extra": _Payload(str(marker))}, path)
    return str(path)


def _loaders():
    from xai_lightning.clip import load_clip
    from xai_lightning.models import ClassifierModule
    from xai_lightning.surgery.transplant import SurgeryPlan

    return {
        "init_checkpoint": lambda p: ClassifierModule(backbone="simple_cnn", init_checkpoint=p),
        "probe CLIP": lambda p: load_clip({"checkpoint": p}),
        "surgery plan": lambda p: SurgeryPlan.load(p),
    }


@pytest.mark.parametrize("what", ["init_checkpoint", "probe CLIP", "surgery plan"])
def test_a_malicious_pickle_is_refused_and_does_not_run(tmp_path, what, monkeypatch):
    monkeypatch.delenv("XAI_TRUST_PICKLE", raising=False)
    marker = tmp_path / "code_ran"
    path = _malicious(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match=rf"{what} '.*evil.pt' holds Python objects .* XAI_TRUST_PICKLE="):
        _loaders()[what](path)
    assert not marker.exists()


def test_a_file_the_user_trusts_loads_with_pickle(tmp_path, monkeypatch):
    from collections import OrderedDict
    from fractions import Fraction

    path = tmp_path / "trusted.pt"
    torch.save({"ratio": Fraction(1, 3), "order": OrderedDict(a=1)}, path)  # a Fraction needs pickle
    from xai_lightning.io import load_file

    with pytest.raises(CheckpointError):
        load_file(str(path), "checkpoint")
    monkeypatch.setenv("XAI_TRUST_PICKLE", str(path))
    assert load_file(str(path), "checkpoint")["ratio"] == Fraction(1, 3)
