"""Metrics: measures vs scipy/numpy, leave-one-out percentile vs a brute-force loop, and a 2-process sync."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import stats

from protoscope.errors import ConfigError, ProtoscopeError, ReferenceDataError
from protoscope.metrics import (
    DISTANCES,
    MEASURES,
    NaturalPercentile,
    PathSimilarity,
    TargetConfidence,
    cosine,
    layer_mean,
    natural_band,
    natural_percentile,
    normalised_l1,
    path_similarity,
    pearson,
    roc_auc,
    spearman,
)

LAYERS = {"conv1": 6, "block.1": 9, "fc": 4}


def random_path(rows: int, seed: int, offset: float = 0.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(rows, c, generator=g) + offset for n, c in LAYERS.items()}


# --- reference implementations (numpy / scipy, one row at a time) ---------------------------------------

def np_measure(name: str, a: np.ndarray, b: np.ndarray) -> float:
    if name == "spearman":
        return stats.spearmanr(a, b).statistic
    if name == "pearson":
        return stats.pearsonr(a, b).statistic
    if name == "cosine":
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.abs(a - b).mean() / (np.abs(b).mean() + 1e-8))


def np_layer_mean_score(name: str, path: dict, ref: dict, i: int) -> float:
    return float(np.mean([np_measure(name, path[n][i], ref[n]) for n in path]))


def brute_force_percentile(name: str, natural: dict, candidate: dict) -> np.ndarray:
    nat = {n: t.double().numpy() for n, t in natural.items()}
    cand = {n: t.double().numpy() for n, t in candidate.items()}
    n_rows = next(iter(nat.values())).shape[0]
    nat_scores = []
    for i in range(n_rows):
        loo = {n: np.delete(x, i, axis=0).mean(0) for n, x in nat.items()}
        nat_scores.append(np_layer_mean_score(name, nat, loo, i))
    full = {n: x.mean(0) for n, x in nat.items()}
    out = []
    for j in range(next(iter(cand.values())).shape[0]):
        s = np_layer_mean_score(name, cand, full, j)
        worse = [v > s if name in DISTANCES else v < s for v in nat_scores]
        out.append(100.0 * np.mean(worse))
    return np.array(out)


# --- measures -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MEASURES))
def test_measure_matches_scipy_numpy(name):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 50, generator=g), torch.randn(7, 50, generator=g)
    got = MEASURES[name](a, b)
    want = [np_measure(name, a[i].double().numpy(), b[i].double().numpy()) for i in range(7)]
    assert got.shape == (7,)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_spearman_with_ties_matches_scipy():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 4, (6, 30), generator=g).float()
    b = torch.randint(0, 3, (6, 30), generator=g).float()
    want = [stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic for i in range(6)]
    np.testing.assert_allclose(spearman(a, b).numpy(), want, atol=1e-5)


def test_known_values_and_broadcast_reference():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    b = torch.tensor([2.0, 4.0, 6.0, 8.0])  # one reference row broadcast to both candidates
    assert torch.allclose(spearman(a, b), torch.tensor([1.0, -1.0]))
    assert torch.allclose(pearson(a, b), torch.tensor([1.0, -1.0]))
    assert torch.allclose(normalised_l1(a, b), torch.tensor([0.5, 3.5 / 5.0]))
    assert torch.allclose(cosine(a, a), torch.ones(2))
    const = torch.ones(1, 4)
    assert pearson(const, b).item() == 0.0 and spearman(const, b).item() == 0.0  # constant row: 0, not NaN


def test_path_similarity_shapes_order_and_errors():
    cand, ref = random_path(5, 0), random_path(1, 1)
    sims = path_similarity(cand, ref, ("spearman", "l1"))
    assert set(sims) == {"spearman", "l1"} and sims["l1"].shape == (5, 3)
    np.testing.assert_allclose(sims["l1"][:, 1].numpy(), normalised_l1(cand["block.1"], ref["block.1"]).numpy())
    assert torch.allclose(layer_mean(sims)["spearman"], sims["spearman"].mean(-1))
    with pytest.raises(ReferenceDataError, match="fc"):
        path_similarity(cand, {n: t for n, t in ref.items() if n != "fc"})
    with pytest.raises(ConfigError, match="unknown"):
        path_similarity(cand, ref, ("kendall",))


# --- percentile ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MEASURES))
def test_percentile_matches_brute_force_loop(name):
    natural, candidate = random_path(12, 2), random_path(5, 3)
    candidate["conv1"][0] = natural["conv1"].mean(0) * 1.01  # a partly close candidate spreads the percentiles
    result = natural_percentile(natural, candidate, (name,))
    np.testing.assert_allclose(result.percentile[name].numpy(), brute_force_percentile(name, natural, candidate), atol=1e-9)
    assert result.natural_scores[name].shape == (12, 3) and result.candidate_scores[name].shape == (5, 3)


def test_class_mean_candidate_is_100th_and_far_candidate_is_0th():
    natural = random_path(20, 4)
    mean = {n: t.mean(0, keepdim=True) for n, t in natural.items()}
    far = {n: 100.0 - 100.0 * m for n, m in mean.items()}  # reversed channel ranks and far away
    both = {n: torch.cat([mean[n], far[n]]) for n in natural}
    result = natural_percentile(natural, both, ("spearman", "l1"))
    assert result.percentile["spearman"].tolist() == [100.0, 0.0]
    assert result.percentile["l1"].tolist() == [100.0, 0.0]


def test_natural_band_quantiles_per_layer():
    result = natural_percentile(random_path(41, 5), random_path(2, 6), ("spearman",))
    band = result.band("spearman")
    assert band.shape == (3, 3) and bool((band[0] <= band[1]).all() and (band[1] <= band[2]).all())
    torch.testing.assert_close(band[1], result.natural_scores["spearman"].median(0).values)
    assert natural_band(torch.arange(11.0)[:, None]).flatten().tolist() == [0.5, 5.0, 9.5]


def test_one_natural_image_raises_with_class_and_fix():
    with pytest.raises(ReferenceDataError, match=r"'tabby'.*1 natural.*add more reference images"):
        natural_percentile(random_path(1, 0), random_path(2, 1), class_name="tabby")


# --- torchmetrics, single process ---------------------------------------------------------------------

def test_path_similarity_metric_matches_functions():
    metric = PathSimilarity(list(LAYERS))
    cands, refs = [random_path(4, 10 + k) for k in range(3)], [random_path(4, 20 + k) for k in range(3)]
    for c, r in zip(cands, refs):
        metric.update(c, r)
    whole = path_similarity({n: torch.cat([c[n] for c in cands]) for n in LAYERS},
                            {n: torch.cat([r[n] for r in refs]) for n in LAYERS})
    out, rows = metric.compute(), metric.per_row()
    for m in MEASURES:
        torch.testing.assert_close(rows[m], whole[m])
        torch.testing.assert_close(out[f"{m}/block.1"], whole[m][:, 1].mean())
        torch.testing.assert_close(out[f"{m}/mean"], whole[m].mean())


def test_natural_percentile_metric_matches_function_and_checks_input():
    metric = NaturalPercentile(list(LAYERS), ("spearman", "l1"), class_names=["cat", "dog"])
    nat = {0: random_path(10, 30), 1: random_path(8, 31, offset=0.5)}
    cand = {0: random_path(3, 32), 1: random_path(2, 33, offset=0.5)}
    for c in (0, 1):
        metric.add_natural(nat[c], c)
    metric.update(cand[1], 1)
    metric.update(cand[0], torch.zeros(3, dtype=torch.long))
    rows = metric.per_row()
    want = {c: natural_percentile(nat[c], cand[c], ("spearman", "l1")) for c in (0, 1)}
    assert rows["class_id"].tolist() == [1, 1, 0, 0, 0]
    for m in ("spearman", "l1"):
        torch.testing.assert_close(rows[m], torch.cat([want[1].percentile[m], want[0].percentile[m]]))
        torch.testing.assert_close(metric.compute()[f"{m}/percentile"], rows[m].mean().float())
        torch.testing.assert_close(metric.per_class()[0].natural_scores[m], want[0].natural_scores[m].float())
    with pytest.raises(ReferenceDataError, match="2"):
        metric.update(cand[0], 2)
    with pytest.raises(ProtoscopeError, match="already added"):
        metric.add_natural(nat[0], 0)
    with pytest.raises(ReferenceDataError, match="'dog'.*1 natural"):
        NaturalPercentile(list(LAYERS), class_names=["cat", "dog"]).add_natural(random_path(1, 0), 1)


def test_target_confidence():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    metric = TargetConfidence()
    metric.update(logits[:2], torch.tensor([0, 0]))
    metric.update(logits[2:], torch.tensor([1]))
    out = metric.compute()
    probs = logits.softmax(-1)[[0, 1, 2], [0, 0, 1]]
    torch.testing.assert_close(out["target_prob"], probs.double().mean())
    torch.testing.assert_close(out["top1"], torch.tensor(1 / 3, dtype=torch.float64))


# --- two processes ------------------------------------------------------------------------------------

def _shards():
    """Per-rank data; the single-process reference feeds rank 0's then rank 1's in the same order."""
    g = torch.Generator().manual_seed(70)
    nat = {c: random_path(6 + c, 40 + c, offset=0.3 * c) for c in range(3)}
    means = {c: {n: t.mean(0) for n, t in nat[c].items()} for c in range(3)}
    return nat, means, [
        # rank 0: naturals of classes 0 and 1; candidates of class 0 and of class 2 (mean passed explicitly)
        {"nat": [0, 1], "cand": [(random_path(3, 50), 0, None), (random_path(2, 51), 2, means[2])],
         "sim": [(random_path(5, 60), random_path(5, 61))], "conf": (torch.randn(5, 4, generator=g), torch.arange(5) % 4)},
        # rank 1: naturals of classes 0 (again) and 2; candidates of class 1 (mean passed) and of class 2
        {"nat": [0, 2], "cand": [(random_path(4, 52), 1, means[1]), (random_path(1, 53), 2, None)],
         "sim": [(random_path(2, 62), random_path(2, 63)), (random_path(1, 64), random_path(1, 65))],
         "conf": (torch.randn(2, 4, generator=g), torch.tensor([1, 3]))},
    ]


def _feed(ranks: list[int]) -> dict:
    nat, _, shards = _shards()
    pct, sim, only0, conf = NaturalPercentile(list(LAYERS), ("spearman", "l1")), PathSimilarity(list(LAYERS)), \
        PathSimilarity(["fc"], "cosine"), TargetConfidence()
    for r in ranks:
        s = shards[r]
        for c in s["nat"]:
            if not (len(ranks) > 1 and r == 1 and c == 0):  # one process adds each class once
                pct.add_natural(nat[c], c)
        for path, c, mean in s["cand"]:
            pct.update(path, c, mean)
        for cand, ref in s["sim"]:
            sim.update(cand, ref)
            if r == 0:
                only0.update(cand, ref)  # rank 1 never updates this one: its state stays empty
        conf.update(*s["conf"])
    return {"pct": pct.compute(), "pct_rows": pct.per_row(),
            "nat": {c: r.natural_scores["l1"] for c, r in pct.per_class().items()},
            "sim": sim.compute(), "sim_rows": sim.per_row(), "only0": only0.compute(), "conf": conf.compute()}


def _worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        result = _feed([rank])
        if rank == 0:
            torch.save(result, out_file)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path):
    torch.set_num_threads(1)
    out_file = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out_file), nprocs=2, join=True)
    got, want = torch.load(out_file), _feed([0, 1])
    assert got["pct_rows"]["class_id"].tolist() == [0, 0, 0, 2, 2, 1, 1, 1, 1, 2]
    assert got["sim_rows"]["spearman"].shape == (8, 3)
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------ the concatenated-path definition


def test_concatenated_path_score_matches_a_hand_computation():
    from protoscope.metrics import concat_similarity, layer_standardisation

    # class mean: layer a = [1, 3] (mean 2, std 1), layer b = [10, 20, 30] (mean 20, std sqrt(200/3))
    mean = {"a": torch.tensor([[1.0, 3.0]]), "b": torch.tensor([[10.0, 20.0, 30.0]])}
    cand = {"a": torch.tensor([[2.0, 2.0]]), "b": torch.tensor([[30.0, 20.0, 10.0]])}
    sb = (200.0 / 3.0) ** 0.5
    z_mean = np.array([-1.0, 1.0, -10 / sb, 0.0, 10 / sb])       # standardised class mean
    z_cand = np.array([0.0, 0.0, 10 / sb, 0.0, -10 / sb])        # the candidate, same map
    std = layer_standardisation(mean)
    assert float(std["a"][0]) == pytest.approx(2.0) and float(std["a"][1]) == pytest.approx(1.0)
    assert float(std["b"][1]) == pytest.approx(sb)
    got = concat_similarity(cand, mean, std, ["spearman", "pearson", "cosine", "l1"])
    assert float(got["pearson"]) == pytest.approx(np.corrcoef(z_cand, z_mean)[0, 1])
    assert float(got["spearman"]) == pytest.approx(stats.spearmanr(z_cand, z_mean)[0])
    assert float(got["cosine"]) == pytest.approx(z_cand @ z_mean / np.linalg.norm(z_cand) / np.linalg.norm(z_mean))
    assert float(got["l1"]) == pytest.approx(np.abs(z_cand - z_mean).mean() / np.abs(z_mean).mean(), rel=1e-6)
    # scaling one layer of both paths (a "loud" layer) leaves the standardised score unchanged
    loud = {"a": mean["a"], "b": 1000 * mean["b"]}
    loud_cand = {"a": cand["a"], "b": 1000 * cand["b"]}
    again = concat_similarity(loud_cand, loud, layer_standardisation(loud), ["pearson", "l1"])
    assert float(again["pearson"]) == pytest.approx(float(got["pearson"]))
    assert float(again["l1"]) == pytest.approx(float(got["l1"]))


def test_concat_percentile_in_function_and_metric_class_agree():
    from protoscope.metrics import NaturalPercentile, natural_percentile

    g = torch.Generator().manual_seed(0)
    natural = {"a": torch.rand(12, 4, generator=g), "b": 5 * torch.rand(12, 6, generator=g)}
    cand = {"a": torch.rand(3, 4, generator=g), "b": 5 * torch.rand(3, 6, generator=g)}
    cand["a"][0], cand["b"][0] = natural["a"].mean(0), natural["b"].mean(0)  # the class mean itself
    res = natural_percentile(natural, cand, ["spearman", "l1"])
    assert float(res.concat_percentile["spearman"][0]) == 100.0 and float(res.concat_percentile["l1"][0]) == 100.0
    metric = NaturalPercentile(["a", "b"], ["spearman", "l1"]).double()
    metric.set_dtype(torch.float64)
    metric.add_natural(natural, 0)
    metric.update(cand, 0)
    rows = metric.per_row()
    for m in ("spearman", "l1"):
        assert torch.allclose(rows[f"concat/{m}"], res.concat_percentile[m].double())
        assert torch.allclose(metric.per_class()[0].candidate_concat[m], res.candidate_concat[m])
    assert set(metric.compute()) >= {"spearman/concat_percentile", "l1/concat_score"}


def test_image_statistics_agree_with_a_hand_computation():
    from protoscope.metrics.image_stats import image_statistics

    image = torch.tensor([[[0.0, 1.0], [0.5, 0.25]],            # channel 0
                          [[0.2, 0.2], [0.2, 0.2]]])            # channel 1: constant
    stats = image_statistics(image[None])
    assert float(stats["clipped"]) == pytest.approx(2 / 8)  # the 0.0 and the 1.0
    assert float(stats["mean"]) == pytest.approx((0 + 1 + 0.5 + 0.25 + 4 * 0.2) / 8)
    c0 = torch.tensor([0.0, 1.0, 0.5, 0.25])
    assert float(stats["spread"]) == pytest.approx((float(((c0 - c0.mean()) ** 2).mean().sqrt()) + 0.0) / 2)
    vertical = ((0.5 - 0.0) ** 2 + (0.25 - 1.0) ** 2 + 0 + 0) / 4   # 2 channels x 1 x 2 neighbour pairs
    horizontal = ((1.0 - 0.0) ** 2 + (0.25 - 0.5) ** 2 + 0 + 0) / 4
    assert float(stats["hf_energy"]) == pytest.approx(vertical + horizontal)


def test_roc_auc_is_the_share_of_positive_negative_pairs_ordered_right():
    assert roc_auc([3, 2, 1], [True, False, False]) == 1.0
    assert roc_auc([1, 2, 3], [True, False, False]) == 0.0
    assert roc_auc([2, 2, 1, 3], [True, False, False, False]) == pytest.approx((0.5 + 1 + 0) / 3)
    scores, labels = [0.4, 0.9, 0.1, 0.5, 0.5, 0.2], [True, True, False, False, True, False]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    assert roc_auc(scores, labels) == pytest.approx(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
    assert np.isnan(roc_auc([1.0, 2.0], [True, True]))
