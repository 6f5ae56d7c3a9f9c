"""Concepts and captions from config (nothing about particular digits or colours is hard-coded).

A concept names an attribute of the data and one caption per value of that attribute, either
explicitly or through a template filled with the data's value names::

    shape: {attribute: digit, template: "a photo of a digit with the value {}."}
    color: {attribute: color, captions: {red: "a photo of a red digit.", green: "a photo of a green digit."}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass
class CaptionSet:
    """Concepts flattened into one caption list (the order of text embeddings and similarity columns)."""

    names: list[str]  # concept names
    attributes: list[str]  # attribute per concept
    values: list[list[str]]  # value names per concept
    captions: list[str]  # flat
    concept_of: torch.Tensor  # [K] concept index of each caption
    value_of: torch.Tensor  # [K] value index (within its concept) of each caption
    keys: list[str]  # metric-safe key per caption: "<concept>_<value>"

    def caption_slice(self, concept: int) -> torch.Tensor:
        return (self.concept_of == concept).nonzero().flatten()


def _key(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]+", "_", text).strip("_")


def _concept_captions(
    name: str, entry: dict, attributes: Mapping[str, Sequence[str]]
) -> tuple[str, list[str], list[str]]:
    """(attribute, value names, one caption per value) of one concept entry, or an error naming what is wrong."""
    if name in ("none", "undecided"):
        raise ValueError(f"concept name {name!r} is reserved (a verdict outcome); choose another name")
    unknown = set(entry) - {"attribute", "template", "captions"}
    if unknown:
        raise ValueError(f"concept {name!r}: unknown keys {sorted(unknown)}; allowed: attribute, template, captions")
    attr = entry.get("attribute")
    if attr not in attributes:
        raise ValueError(
            f"concept {name!r} refers to attribute {attr!r}, which the data does not provide; "
            f"available: {', '.join(attributes)}"
        )
    vals = [str(v) for v in attributes[attr]]
    if ("template" in entry) == ("captions" in entry):
        raise ValueError(f"concept {name!r}: give exactly one of 'template' or 'captions'")
    if "template" in entry:
        tpl = str(entry["template"])
        if "{}" not in tpl:
            raise ValueError(f"concept {name!r}: template {tpl!r} has no '{{}}' for the value")
        return attr, vals, [tpl.format(v) for v in vals]
    given = {str(k): str(v) for k, v in dict(entry["captions"]).items()}
    missing, extra = [v for v in vals if v not in given], [k for k in given if k not in vals]
    if missing or extra:
        raise ValueError(
            f"concept {name!r}: captions must cover exactly the {attr} values {vals}; "
            f"missing {missing}, unknown {extra}"
        )
    return attr, vals, [given[v] for v in vals]


def resolve_concepts(spec: Mapping[str, Mapping], attributes: Mapping[str, Sequence[str]]) -> CaptionSet:
    """Build the caption set.

    Args:
        spec: ``{concept: {attribute: ..., template: "...{}..."} | {attribute: ..., captions: {value: caption}}}``.
        attributes: what the data provides: ``{attribute: [value names]}`` (e.g. the datamodule's
            ``{"digit": ["5", "8"], "color": ["red", "green"]}``).

    Raises:
        ValueError: unknown attribute (lists the available ones), a captions mapping that misses a value
            or names an unknown one, a template without ``{}``, an empty spec.
    """
    if not spec:
        raise ValueError(
            "concepts is empty; give e.g. {shape: {attribute: digit, template: 'a photo of the digit {}.'}}"
        )
    names, attrs, values, captions, concept_of, value_of, keys = [], [], [], [], [], [], []
    for ci, (name, entry) in enumerate(spec.items()):
        attr, vals, caps = _concept_captions(str(name), dict(entry), attributes)
        names.append(str(name))
        attrs.append(attr)
        values.append(vals)
        for vi, cap in enumerate(caps):
            captions.append(cap)
            concept_of.append(ci)
            value_of.append(vi)
            keys.append(f"{_key(str(name))}_{_key(vals[vi])}")
    if len(set(captions)) != len(captions):
        raise ValueError(f"captions must be distinct; got {captions}")
    return CaptionSet(names, attrs, values, captions, torch.tensor(concept_of), torch.tensor(value_of), keys)
