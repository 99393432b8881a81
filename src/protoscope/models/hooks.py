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
    vector per image by ``reduce`` (the classifier's :class:`Reduction`; None keeps them whole): an
    :class:`ActivationTap` that lives for the block."""
    tap = ActivationTap(network, layer_names, reduce=reduce)
    try:
        yield tap.outputs
    finally:
        tap.remove()


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
    ``network.net``; ``logits`` is the network's output), outputs reduced to one vector per image by
    ``reduce`` when given. :meth:`clear` empties both before a pass; :meth:`remove` uninstalls the hooks.
    The one hook mechanism of protoscope: :func:`record_activations` is a tap that lives for a block.
    """

    def __init__(self, network: Normalized, layers: list[str], input_layers: list[str] = (),
                 reduce: Reduction | None = None) -> None:
        self.reduce = reduce
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
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.outputs[name] = self.reduce(out, name) if self.reduce is not None else out
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
