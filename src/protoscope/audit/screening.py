"""Mark screening over all classes: paste a mark onto carriers and rank every class by what it gains.

Per class ``k`` and carrier ``i``: the logit gain ``z_k(paste(x_i)) - z_k(x_i)`` and the log-prob gain
(the same in log-softmax). A class is scored over the carriers that are not its own prototypes: the mean
and standard deviation of both gains, the per-carrier rank of its logit gain among all classes (median,
and the share of carriers where it is in the top ``top_k``), and the mean gain per carrier group.
Classes are ranked by the mean gain (``rank_by``: logit or logprob), rounded to ``decimals`` and ties
broken by class index, all in float64: the ranking is deterministic for a seed and does not move with
the number of threads (whose float32 sums differ in the last bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..models import Classifier
from ..shortcuts.marks import MarkKind
from .carriers import Carriers

RANK_BY = ("logit", "logprob")


@torch.no_grad()
def logits_of(classifier: Classifier, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``[N,K]`` float64 logits, in batches, on the classifier's device."""
    device = classifier.network.mean.device
    out = [classifier.network(images[s:s + batch_size].to(device)).double().cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out)


def ordered(values: torch.Tensor, decimals: int) -> list[int]:
    """Indices of ``values`` from largest to smallest, after rounding to ``decimals``; ties by index."""
    rounded = torch.round(values.double() * 10 ** decimals).tolist()
    return sorted(range(len(rounded)), key=lambda i: (-rounded[i], i))


def per_carrier_ranks(gains: torch.Tensor) -> torch.Tensor:
    """``[N,K]``: rank (1 = largest) of each class's gain on each carrier; ties by class index."""
    order = torch.sort(-gains, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, gains.shape[1] + 1).expand_as(order).contiguous())
    return ranks


@dataclass
class Screening:
    """Per class of the model: gains of the mark over the carriers, and the rankings."""

    records: list[dict[str, Any]]  # in rank order
    logit_gain: torch.Tensor  # [N,K] float64
    logprob_gain: torch.Tensor  # [N,K]
    carriers: Carriers

    def rank_of(self, class_index: int) -> int:
        return next(r["rank"] for r in self.records if r["class_index"] == class_index)


def masked_mean_std(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``values`` ``[N,K]``: mean and std over the rows where ``keep`` ``[N,K]`` is true."""
    w = keep.double()
    n = w.sum(0).clamp_min(1)
    mean = (values * w).sum(0) / n
    var = (((values - mean) ** 2) * w).sum(0) / (n - 1).clamp_min(1)
    return mean, var.sqrt()


def screen(classifier: Classifier, mark: MarkKind, carriers: Carriers, seed: int = 0, batch_size: int = 64,
           rank_by: str = "logit", decimals: int = 4, top_k: int = 10) -> Screening:
    """Rank every class of ``classifier`` by how much pasting ``mark`` onto ``carriers`` raises it."""
    if rank_by not in RANK_BY:
        raise ConfigError(f"screening.rank_by={rank_by!r}: choose {' or '.join(RANK_BY)}")
    mark.check_fits(carriers.images)
    marked = mark.paste(carriers.images, torch.Generator().manual_seed(int(seed)))
    before = logits_of(classifier, carriers.images, batch_size)
    after = logits_of(classifier, marked, batch_size)
    logit_gain = after - before
    logprob_gain = after.log_softmax(-1) - before.log_softmax(-1)
    classes = torch.tensor(carriers.classes)
    keep = classes[:, None] != torch.arange(logit_gain.shape[1])[None]  # not the class's own prototypes
    logit_mean, logit_std = masked_mean_std(logit_gain, keep)
    logprob_mean, logprob_std = masked_mean_std(logprob_gain, keep)
    ranks = per_carrier_ranks(logit_gain).double()
    top_share, _ = masked_mean_std((ranks <= top_k).double(), keep)
    big = torch.where(keep, ranks, torch.tensor(float("nan"), dtype=torch.float64))
    median_rank = big.nanmedian(0).values
    groups = list(dict.fromkeys(carriers.groups))
    group_means = {g: masked_mean_std(logit_gain, keep & torch.tensor([x == g for x in carriers.groups])[:, None])[0]
                   for g in groups}
    primary = logit_mean if rank_by == "logit" else logprob_mean
    order = ordered(primary, decimals)
    logprob_rank = {k: r + 1 for r, k in enumerate(ordered(logprob_mean, decimals))}
    logit_rank = {k: r + 1 for r, k in enumerate(ordered(logit_mean, decimals))}
    records = []
    for r, k in enumerate(order):
        records.append({
            "rank": r + 1, "class_index": k, "class_name": classifier.class_names[k],
            "logit_gain": float(logit_mean[k]), "logit_gain_std": float(logit_std[k]), "logit_rank": logit_rank[k],
            "logprob_gain": float(logprob_mean[k]), "logprob_gain_std": float(logprob_std[k]),
            "logprob_rank": logprob_rank[k], "median_carrier_rank": float(median_rank[k]),
            f"top{top_k}_share": float(top_share[k]), "carriers": int(keep[:, k].sum()),
            **{f"logit_gain_{g}": float(group_means[g][k]) for g in groups},
        })
    return Screening(records, logit_gain, logprob_gain, carriers)


def rank_table(screenings: Sequence[tuple[str, Screening]], classes: Sequence[int],
               names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class of interest: its rank and mean gains under each labelled screening (e.g. carriers
    without photos vs. photos)."""
    rows = []
    for c, name in zip(classes, names):
        row: dict[str, Any] = {"class_index": int(c), "class_name": name}
        for label, s in screenings:
            rec = next(x for x in s.records if x["class_index"] == int(c))
            row.update({f"{label}_rank": rec["rank"], f"{label}_logprob_rank": rec["logprob_rank"],
                        f"{label}_logit_gain": rec["logit_gain"], f"{label}_logprob_gain": rec["logprob_gain"]})
        rows.append(row)
    return rows
