"""The markdown summary: per class, mean ± std over seeds of each source, next to natural images."""

from __future__ import annotations

from typing import Sequence

import torch

from .core import EvaluationResult

NAMES = {"spearman": "Spearman", "pearson": "Pearson", "cosine": "Cosine", "l1": "L1"}


def summary_measures(result: EvaluationResult) -> list[str]:
    """Spearman and L1 (the paper's measures) when evaluated, else the first two measures."""
    chosen = [m for m in ("spearman", "l1") if m in result.measures]
    return chosen or list(result.measures[:2])


def _pm(values: torch.Tensor, digits: int = 3) -> str:
    if values.numel() == 0:
        return "–"
    mean = float(values.double().mean())
    if values.numel() == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(values.double().std()):.{digits}f}"


def _pct_cell(values: torch.Tensor) -> str:
    return _pm(values, 1)


def _natural_cell(values: torch.Tensor) -> str:
    q = torch.quantile(values.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return f"{float(q[1]):.3f} [{float(q[0]):.3f}, {float(q[2]):.3f}]"


DEFINITION_TITLES = {
    "layer_mean": "Path = mean over layers of the per-layer scores",
    "concat": "Path = all layers concatenated (each layer standardised by the class mean's mean and std "
              "over its channels)",
}


def _source_row(name: str, result: EvaluationResult, rows: list[int], measures: Sequence[str],
                definition: str = "layer_mean") -> list[str]:
    idx = torch.tensor(rows, dtype=torch.long)
    cells = [name, result.label, str(len(rows))]
    for m in measures:
        pct = result.path_percentile(m, definition)[idx]
        cells += [_pm(result.path_score(m, definition)[idx]), _pct_cell(pct),
                  f"{100.0 * float((pct >= 100.0).double().mean()):.0f}%"]
    cells.append(_pm(result.target_prob[idx]))
    return cells


def _table(result: EvaluationResult, baseline: EvaluationResult | None, measures: Sequence[str],
           definition: str) -> list[str]:
    sources = [result] + ([baseline] if baseline is not None else [])
    head = ["Class", "Source", "n"]
    for m in measures:
        arrow = "↓" if m == "l1" else "↑"
        head += [f"{NAMES.get(m, m)} {arrow}", f"{NAMES.get(m, m)} pct", f"{NAMES.get(m, m)} = 100 pct"]
    head.append("target p")
    lines = [f"## {DEFINITION_TITLES[definition]}", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    classes = list(dict.fromkeys(result.classes + (baseline.classes if baseline is not None else [])))
    for c in classes:
        owner = result if c in result.natural else baseline
        name = owner.class_name(c)
        for src in sources:
            rows = src.rows_of(c)
            if rows:
                lines.append("| " + " | ".join(_source_row(name, src, rows, measures, definition)) + " |")
        nat = [name, "natural", str(owner.natural[c][measures[0]].shape[0])]
        for m in measures:
            nat += [_natural_cell(owner.natural_path_score(c, m, definition)), "–", "–"]
        nat.append("–")
        lines.append("| " + " | ".join(nat) + " |")
    for src in sources:
        lines.append("| " + " | ".join(_source_row("**all classes**", src, list(range(len(src))), measures,
                                                   definition)) + " |")
    pooled = {m: torch.cat([(result if c in result.natural else baseline).natural_path_score(c, m, definition)
                            for c in classes]) for m in measures}
    nat = ["**all classes**", "natural", str(pooled[measures[0]].numel())]
    for m in measures:
        nat += [_natural_cell(pooled[m]), "–", "–"]
    nat.append("–")
    lines.append("| " + " | ".join(nat) + " |")
    return lines


STAT_TITLES = {"clipped": "clipped %", "mean": "mean", "spread": "colour spread", "hf_energy": "HF energy"}


def _stat_values(name: str, values: torch.Tensor) -> torch.Tensor:
    return 100.0 * values if name == "clipped" else values


def image_stats_table(result: EvaluationResult, baseline: EvaluationResult | None = None) -> list[str]:
    """Pixel statistics per class: each source (mean ± std over seeds) and the natural photos (median
    [5%, 95%]); empty when the reference holds no image statistics."""
    sources = [s for s in (result, baseline) if s is not None]
    classes = [c for c in dict.fromkeys(c for s in sources for c in s.classes)
               if any(c in s.natural_image_stats for s in sources)]
    if not classes or not result.image_stats:
        return []
    names = list(result.image_stats)
    head = ["Class", "Source", "n"] + [STAT_TITLES.get(n, n) for n in names]
    lines = ["## Image statistics (pixels in [0,1], before the model's normalisation)", "",
             "Clipped: share of values within half a grey level of 0 or 1; colour spread: mean over channels "
             "of the standard deviation over pixels; HF energy: mean squared difference of neighbouring "
             "pixels (what L_hf penalises).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for c in classes:
        owner = next(s for s in sources if c in s.natural_image_stats)
        for s in sources:
            rows = s.rows_of(c)
            if rows:
                idx = torch.tensor(rows, dtype=torch.long)
                lines.append("| " + " | ".join([owner.class_name(c), s.label, str(len(rows))] + [
                    _pm(_stat_values(n, s.image_stats[n][idx])) for n in names]) + " |")
        natural = owner.natural_image_stats[c]
        lines.append("| " + " | ".join([owner.class_name(c), "natural", str(len(next(iter(natural.values()))))] + [
            _natural_cell(_stat_values(n, natural[n])) for n in names]) + " |")
    return lines + ["", "![prototypes next to natural photos of their class](examples.png)", ""]


def summary_markdown(result: EvaluationResult, baseline: EvaluationResult | None = None) -> str:
    """A markdown report: per path definition, one block of rows per class (each source, then natural
    images) and an overall block."""
    measures = summary_measures(result)
    lines = [
        "# Path similarity to the class-mean activation path",
        "",
        f"Layers: {len(result.layer_names)} ({', '.join(result.layer_names[:6])}"
        f"{', ...' if len(result.layer_names) > 6 else ''}). Source rows give "
        "mean ± std over seeds. *pct*: percentile among the natural images of the class (each scored "
        "against the mean of the others); 100 means closer to the class mean than every natural image. "
        "*= 100 pct*: share of rows at the 100th percentile (the paper's claim). Natural rows give the "
        "median [5%, 95%] of the natural images' own scores. Two path definitions, one table each.",
        "",
    ]
    for definition in ("layer_mean", "concat"):
        lines += _table(result, baseline, measures, definition) + [""]
    lines += image_stats_table(result, baseline)
    ref = result.reference
    if ref:
        lines += [f"Reference statistics: key `{ref.get('key', '')[:12]}`, "
                  f"{'loaded from cache' if ref.get('from_cache') else 'computed'}, "
                  f"{sum(ref.get('counts', {}).values())} natural images."]
    return "\n".join(lines).rstrip() + "\n"
