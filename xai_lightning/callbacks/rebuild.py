"""Rebuilding a LightningModule from its saved hyper-parameters (the SurgeryProbe's reference networks)."""

from __future__ import annotations

import copy

import lightning as L
import torch


def rebuild(module: L.LightningModule, allow_copy: bool = False) -> torch.nn.Module:
    """A new instance of ``module``'s class from its saved hyper-parameters (its own constructor and
    initialisation), checked to have the same parameters and shapes. With ``allow_copy`` a module that cannot
    be rebuilt is deep-copied instead (its weights are about to be overwritten)."""
    # LightningCLI adds private entries (``_class_path``, ``_instantiator``) that are no constructor arguments
    hparams = {k: v for k, v in dict(getattr(module, "hparams", {}) or {}).items() if not k.startswith("_")}
    try:
        other = type(module)(**hparams)
    except TypeError as err:
        if allow_copy:
            return detached_copy(module)
        raise ValueError(
            f"SurgeryProbe: cannot rebuild {type(module).__name__} from its hyper-parameters ({err}); call "
            "self.save_hyperparameters() in its __init__, or set reference_reinits: 0"
        ) from err
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in other.state_dict().items()}
    if want != got:
        if allow_copy:
            return detached_copy(module)
        diff = sorted(set(want.items()) ^ set(got.items()))[:3]
        raise ValueError(
            f"SurgeryProbe: {type(module).__name__}(**hparams) builds another architecture than the model "
            f"(differs at {diff}); save every constructor argument with self.save_hyperparameters(), or set "
            "reference_reinits: 0"
        )
    return other.to(next(module.parameters()).device)


def detached_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of a module in the middle of training: its trainer is not copied, and tensors that are
    outputs of a graph (e.g. a cached loss) are copied detached."""
    memo: dict[int, object] = {}
    for m in module.modules():
        for name, value in vars(m).items():
            if name == "_trainer" and value is not None:
                memo[id(value)] = None
            elif isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(module, memo)
