"""Activation recording: forward hooks installed and always removed by a context manager."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .classifier import LOGITS, Classifier, Normalized
from .reduce import Reduction


@contextmanager
def record_activations(network: Normalized, layer_names: list[str],
                       reduce: Reduction | None = Reduction()) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layer_names`` on every forward pass inside the block, each reduced to one
    vector per image by ``reduce`` (the classifier's :class:`Reduction`; None keeps them whole)."""
    store: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            store[name] = reduce(out, name) if reduce is not None else out

        return hook

    try:
        for name in layer_names:
            module = network if name == LOGITS else network.net.get_submodule(name)
            handles.append(module.register_forward_hook(hook_for(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def activation_path(classifier: Classifier, images: torch.Tensor, layer_names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The activation path of ``images`` (in [0,1]): layer name -> [B, C_layer] float32 tensor."""
    names = classifier.layer_names if layer_names is None else layer_names
    with record_activations(classifier.network, names, classifier.reduction) as store:
        classifier.network(images)
    return {n: store[n].float() for n in names}


class ActivationTap:
    """Forward hooks installed once for a whole run (not per step), so a compiled network keeps its graph.

    After each forward pass, ``outputs[name]`` holds the output of every layer in ``layers`` and
    ``inputs[name]`` the first input of every module in ``input_layers`` (module names of
    ``network.net``; ``logits`` is the network's output). :meth:`clear` empties both before a pass;
    :meth:`remove` uninstalls the hooks.
    """

    def __init__(self, network: Normalized, layers: list[str], input_layers: list[str] = ()) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in layers:
            module = network if name == LOGITS else network.net.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._output_hook(name)))
        for name in input_layers:
            self._handles.append(network.net.get_submodule(name).register_forward_hook(self._input_hook(name)))

    def _output_hook(self, name: str):
        def hook(_module, _inputs, output):
            self.outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def _input_hook(self, name: str):
        def hook(_module, inputs, _output):
            self.inputs[name] = inputs[0]
        return hook

    def clear(self) -> None:
        self.outputs.clear()
        self.inputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
