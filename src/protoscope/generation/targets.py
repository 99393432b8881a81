"""Which targets a run's rows optimise: class groups for class objectives, features for feature objectives.

``protoscope-generate objective=channel objective.layer=stage2 'targets=[3,7]' seeds_per_class=2`` gives
four rows ``(channel 3, seed 0) ... (channel 7, seed 1)``; each row's index reaches the objective as
``ctx.targets[r, 0]``. Class objectives read ``targets`` (or, when it is unset, ``classes``) as before.
Bad targets fail here, before the model loop starts: an unknown layer (with close names), an index out of
the layer's range, a direction of the wrong size.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..models import Classifier
from ..objectives import Sum, Term
from .rows import CLASS, Row, Target, resolve_rows, row_targets


def target_term(objective: Term) -> Term:
    """The term that decides what a row's target is: the objective, or in a sum the part that reads each
    row's own target (else the first part that fixes one)."""
    parts = list(objective.terms) if isinstance(objective, Sum) else [objective]
    targeted = [t for t in parts if t.target_kind is not None]
    if not targeted:
        raise ConfigError("the objective has no target: give a class objective (objective=logit) or a feature "
                          "(objective=channel|neuron|direction|deepdream)")
    reading = [t for t in targeted if t.fixed_target() is None]
    kinds = sorted({t.target_kind for t in reading})
    if len(kinds) > 1:
        raise ConfigError(f"the objective's terms read row targets of different kinds ({', '.join(kinds)}): "
                          "a run's rows have one kind of target; fix the index of all but one (e.g. index=7)")
    return reading[0] if reading else targeted[0]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def objective_kind(cfg: DictConfig) -> str:
    """The kind of target the run's objective optimises (``class`` when the config has no objective)."""
    from ..hydra_utils import build

    return target_term(build(cfg.objective)).target_kind if cfg.get("objective") else CLASS


def resolve_run_rows(cfg: DictConfig, classifier: Classifier, size: int, objective: Term | None = None) -> list[Row]:
    """The rows of a generation config: ``targets`` (else ``classes``) x ``seeds_per_class``."""
    from ..hydra_utils import build

    if objective is None and cfg.get("objective"):
        objective = build(cfg.objective)
    targets, seeds = _plain(cfg.get("targets")), int(cfg.seeds_per_class)
    term = target_term(objective) if objective is not None else None
    if term is None or term.target_kind == CLASS:
        return resolve_rows(targets if targets is not None else _plain(cfg.classes), classifier.class_names, seeds)
    return feature_rows(objective, term, targets, seeds, classifier, size)


def check_layers(objective: Term, classifier: Classifier) -> None:
    """Every layer the objective reads is a module of the network (``auto`` resolved), else one line naming
    close module names."""
    modules = [n for n, _ in classifier.network.net.named_modules() if n]
    for name in objective.layers(classifier):
        if name == "logits" or name in modules:
            continue
        close = difflib.get_close_matches(name, modules, n=5, cutoff=0.5)
        hint = f"close names: {', '.join(close)}" if close else \
            f"its path layers: {', '.join(n for n in classifier.layer_names if n != 'logits')}"
        raise ConfigError(f"layer {name!r} is not a module of model {classifier.name} ({hint}); "
                          "set objective.layer=<module name>")


def _indices(items: Any, count: int, kind: str) -> list[int]:
    if isinstance(items, str) and items == "all":
        return list(range(count))
    items = items if isinstance(items, (list, tuple)) else [items]
    if not items:
        raise ConfigError(f"targets is empty: give {kind} indices, e.g. targets=[0,1], or targets=all")
    out = []
    for item in items:
        try:
            index = int(str(item).strip())
        except ValueError:
            raise ConfigError(f"target {item!r} is not a {kind} index: give integers, e.g. targets=[0,1]") from None
        if not 0 <= index < count:
            raise ConfigError(f"target {index} is out of range: the layer has {count} {kind}s (0..{count - 1})")
        out.append(index)
    return out


def feature_rows(objective: Term, term: Term, items: Any, seeds: int, classifier: Classifier,
                 size: int) -> list[Row]:
    """Rows for a feature objective, checked on one probe pass of the network."""
    from .renderer import evaluate
    from ..models.hooks import record_activations

    if seeds < 1:
        raise ConfigError(f"seeds_per_class must be >= 1, got {seeds}")
    kind, fixed = term.target_kind, term.fixed_target()
    check_layers(objective, classifier)
    probe = torch.full((1, classifier.channels, size, size), 0.5, device=classifier.network.mean.device)
    with torch.no_grad(), record_activations(classifier.network, [term.layer], reduce=None) as store:
        classifier.network(probe)
    count = term.target_count(store[term.layer].float(), classifier.reduction)
    if items is None and fixed is None:
        raise ConfigError(f"objective {kind} optimises each row's own {kind}: give targets=[...] ({kind} indices "
                          f"0..{count - 1} of {term.layer}) or targets=all")
    if items is not None and fixed is not None:
        raise ConfigError(f"the objective fixes its {kind} ({term.describe_target(fixed)}): drop targets= (or, where "
                          "it is set, objective.index, to give each row its own)")
    ids = [fixed] if items is None else _indices(items, count, kind)
    if fixed is not None:
        _indices([fixed], count, kind)
    rows = [Row(Target(kind, (i,), term.describe_target(i)), s) for i in ids for s in range(seeds)]
    evaluate(classifier, objective, probe.expand(len(ids), -1, -1, -1),
             row_targets(rows[::seeds], classifier.num_classes))  # e.g. a direction of the wrong size
    return rows


def target_values(classifier: Classifier, objective: Term, images: torch.Tensor, rows: Sequence[Row],
                  batch_size: int = 64) -> torch.Tensor:
    """Each row's target activation (the negated loss of :func:`target_term`) on its untransformed image."""
    from .renderer import evaluate

    term = target_term(objective)
    device = classifier.network.mean.device
    targets = row_targets(rows, classifier.num_classes)
    return torch.cat([-evaluate(classifier, term, images[i:i + batch_size].to(device),
                                targets[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])
