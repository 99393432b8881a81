"""What one optimisation step exposes to objectives and regularisers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.reduce import Reduction


@dataclass
class StepContext:
    """Tensors of the current step for the rows this process optimises.

    Attributes:
        images: untransformed images [R,C,H,W] in [0,1].
        inputs: the transformed images the classifier saw.
        logits: classifier output [R,K].
        targets: each row's target: class weights [R,K] (rows sum to 1) for class rows, the feature
            index [R,1] (int64) for feature rows (:func:`~protoscope.generation.rows.row_targets`).
        bn_inputs: batch-norm layer name -> (its input [R,C,h,w], running mean, running var),
            filled only when a regulariser asks for it. When the step runs a network whose batch norms are
            folded into their convolutions, the tensor is the batch norm's output instead, and ``bn_affine``
            maps it back.
        bn_affine: batch-norm layer name -> (scale, shift) [C]: the layer's input is ``scale * t + shift`` of
            the tensor ``t`` in ``bn_inputs`` (absent: ``t`` is the input itself).
        activations: layer name -> its output on ``inputs`` (not reduced), for the layers the
            terms read (:meth:`~protoscope.objectives.Term.layers`).
        reduction: how a layer's output becomes one vector per image (the model family's).
        bn_moments: the batch-norm inputs' channel moments by scope, computed once per step for every term
            that reads them (:func:`~protoscope.regularizers.terms.bn_input_moments`).
    """

    images: torch.Tensor
    inputs: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    bn_inputs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    bn_affine: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    reduction: Reduction = field(default_factory=Reduction)
    bn_moments: dict[str, list[tuple[torch.Tensor, ...]]] = field(default_factory=dict)
