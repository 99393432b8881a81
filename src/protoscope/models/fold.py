"""Batch norms folded into the convolutions before them: the same frozen network with less work per step.

In eval mode a batch norm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one convolution
with rescaled weights and a bias. The optimisation of prototypes runs the frozen network thousands of
times (forward and input-gradient), so folding removes a normalisation pass and its backward from every
step. The copy is checked against the original on a random batch; anything not foldable is left as is.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .classifier import Normalized

log = logging.getLogger("protoscope")


def batch_norms(module: nn.Module) -> dict[str, nn.Module]:
    """The batch-norm layers of ``module`` by name (those that keep running statistics)."""
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


class _LeafTracer(fx.Tracer):
    """Keeps convolutions and batch norms (subclasses included, e.g. 'same'-padding convs) as single nodes."""

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)) or \
            super().is_leaf_module(m, name)


def bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode batch norm as a per-channel affine map ``bn(x) = scale * x + shift``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -scale * bn.running_mean
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def fold_batchnorm(network: Normalized, size: int, tolerance: float = 1e-3,
                   invertible: bool = False) -> tuple[Normalized, int]:
    """A copy of ``network`` (hooks included) whose conv -> batch-norm pairs are folded, and how many.

    A pair is folded when the convolution's output feeds only the batch norm and neither module is used
    twice. A folded batch norm stays in the copy as an ``nn.Identity`` of the same name, whose input is then
    the batch norm's output. ``invertible``: fold only batch norms whose input can be recovered from that
    output (every channel's scale away from 0; see :func:`bn_scale_shift`). Returns ``network`` itself (and 0)
    when the model cannot be traced, nothing is foldable, or the folded copy's logits differ from the
    original's by more than ``tolerance`` (relative).
    """
    folded = copy.deepcopy(network)
    net = folded.net
    try:
        graph = _LeafTracer().trace(net)
    except Exception as exc:  # noqa: BLE001 - dynamic control flow etc.: run unfolded
        log.debug("batch norms not folded: the model cannot be traced (%s)", exc)
        return network, 0
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    count = 0
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not node.args:
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        conv = modules.get(prev.target)
        if not isinstance(conv, nn.modules.conv._ConvNd) or calls[prev.target] != 1 or calls[node.target] != 1:
            continue
        if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
            continue
        if invertible and not bool((bn_scale_shift(bn)[0].abs() > 1e-6).all()):
            continue
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias, transpose=getattr(conv, "transposed", False))
        conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
        conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
        parent, _, name = node.target.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, name, nn.Identity())
        count += 1
    if not count:
        return network, 0
    device = network.mean.device
    probe = torch.rand(2, network.mean.shape[1], size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        reference, result = network.net(probe), folded.net(probe)  # the inner nets: user hooks stay silent
    error = float((reference - result).abs().max() / reference.abs().max().clamp_min(1e-12))
    if not error <= tolerance:
        log.warning("batch norms not folded: the folded network's logits differ by %.2g (relative)", error)
        return network, 0
    return folded, count
