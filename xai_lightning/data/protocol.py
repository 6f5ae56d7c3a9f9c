"""What the probes need from a data module, stated once: ``ProbeData`` and ``EditableData``.

A data module that the ``ConceptProbe`` (and ``SurgeryProbe``) can read has:

* ``val_split_names``: the names of its validation dataloaders, in order (the probe split among them);
* ``class_names``: the classes, in the order of the model's outputs;
* ``attributes``: attribute -> the names of its values (the concepts' values: ``{"digit": ["5", "8"],
  "color": ["red", "green"]}``);
* ``attribute_keys``: attribute -> the batch key that holds each image's value index (-1 = unknown);
* ``image_size``: the side of its square images;
* ``datasets``: split name -> dataset (read for sizes before training).

Its batches are dicts with ``image`` ([B, 3, H, W] in [0, 1]), ``label`` (the class index), the attribute
keys and ``index`` (the image's position in its split: DDP de-duplication and held-out halves need it).

``EditableData`` adds the counterfactual edits the ground truth needs (``CounterfactualCheck``):
``counterfactual_names`` and ``counterfactuals(split, batch) -> {concept: (edited images, mask of images
that could be edited)}``. ``ColorMNISTDataModule``, ``SceneDigitsDataModule`` and
``ImageFolderAttributesDataModule`` (no edits: real photographs cannot be edited) implement them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset


@runtime_checkable
class ProbeData(Protocol):
    val_split_names: Sequence[str]
    class_names: Sequence[str]
    attributes: Mapping[str, Sequence[str]]
    attribute_keys: Mapping[str, str]
    image_size: int
    datasets: Mapping[str, Dataset]


@runtime_checkable
class EditableData(ProbeData, Protocol):
    counterfactual_names: Sequence[str]

    def counterfactuals(
        self, split: str, batch: Mapping[str, torch.Tensor]
    ) -> Mapping[str, tuple[torch.Tensor, torch.Tensor]]: ...


PROBE_DATA = ("val_split_names", "class_names", "attributes", "attribute_keys", "image_size", "datasets")
EDITABLE_DATA = (*PROBE_DATA, "counterfactual_names", "counterfactuals")


def require(datamodule: Any, who: str, editable: bool = False) -> Any:
    """``datamodule`` if it has what ``who`` needs, else a one-line error naming what it lacks."""
    wanted = EDITABLE_DATA if editable else PROBE_DATA
    if datamodule is None:
        raise ValueError(f"{who} needs a data module (trainer.fit(model, datamodule=...) or data: in the config)")
    missing = [name for name in wanted if not hasattr(datamodule, name)]
    if missing:
        kind = "EditableData" if editable else "ProbeData"
        raise ValueError(
            f"{who} needs a data module with {', '.join(missing)}; {type(datamodule).__name__} lacks "
            f"{'it' if len(missing) == 1 else 'them'} (the contract: xai_lightning.data.{kind})"
        )
    return datamodule
