"""recipes/convergence.py's tables from hand-made pipeline results: paired gains, verdicts.

A gain is checked against the closed form of a paired t interval: per-seed differences d_s of
top-1 rates, half-width t_{0.975, S-1} sqrt(max(var(d), floor) / S), where the floor is the
mean over seeds of the binomial variances p (1 - p) / n of both rates at Haldane's
(k + 0.5) / (n + 1). Values are float64 sums of O(1) numbers, compared as 3-decimal text
away from any rounding boundary.
"""

import math
import pathlib

import pytest
from scipy import stats

RECIPES = pathlib.Path(__file__).resolve().parents[2] / "recipes"
SIZE = 1000  # reconstructions per seed


@pytest.fixture
def convergence(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    import convergence

    return convergence


def outcomes(count, size=SIZE):
    """`count` successes out of `size` 0/1 top-1 outcomes, as results.json stores them."""
    return [1.0] * count + [0.0] * (size - count)


def summary(counts, size=SIZE):
    """An attack's summary: top-1 (its interval is passed through as given) and its groups."""
    mean = sum(counts) / len(counts) / size
    return {"aa1": {"mean": mean, "low": mean - 0.01, "high": mean + 0.01},
            "groups": {"top1": [outcomes(count, size) for count in counts]}}


def defense(seeds, size=SIZE, **counts):
    """A defense's results: its seeds and per attack the successes of each seed."""
    return {"seeds": list(seeds),
            "attacks": {name: summary(values, size) for name, values in counts.items()}}


def paired_gain(later, earlier, size=SIZE):
    """`"mean [low, high]"` of the paired t interval of later - earlier (module doc)."""
    seeds = len(later)
    differences = [(a - b) / size for a, b in zip(later, earlier)]
    mean = sum(differences) / seeds
    variance = sum((d - mean) ** 2 for d in differences) / (seeds - 1)

    def binomial(k):
        p = (k + 0.5) / (size + 1)
        return p * (1 - p) / size

    floor = sum(binomial(a) + binomial(b) for a, b in zip(later, earlier)) / seeds
    half = stats.t.ppf(0.975, seeds - 1) * math.sqrt(max(variance, floor) / seeds)
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def top1_text(counts, size=SIZE):
    mean = sum(counts) / len(counts) / size
    return f"{mean:.3f} [{mean - 0.01:.3f}, {mean + 0.01:.3f}]"


def test_gains_are_paired_by_seed_and_judged_on_their_interval(convergence):
    none = [(500, 520, 480), (700, 750, 680), (690, 730, 670)]  # gmi at x1, x2, x4
    kedmi = [(500, 520, 480), (540, 560, 520), (540, 560, 520)]
    # Trap-MID: seeds whose levels differ by 0.3 but gain alike; x2 lists them as 2, 0, 1.
    trapmid = [(200, 500, 800), (300, 600, 900), (300, 600, 890)]
    results = {
        1: {"none": defense((0, 1, 2), gmi=none[0], kedmi=kedmi[0], lookup=(900, 900, 900)),
            "trapmid": defense((0, 1, 2), gmi=trapmid[0])},
        2: {"none": defense((0, 1, 2), gmi=none[1], kedmi=kedmi[1], lookup=(900, 900, 900)),
            "trapmid": defense((2, 0, 1), gmi=[trapmid[1][i] for i in (2, 0, 1)])},
        4: {"none": defense((0, 1, 2), gmi=none[2], kedmi=kedmi[2], lookup=(900, 900, 900)),
            "trapmid": defense((0, 1, 2), gmi=trapmid[2])},
    }
    results[1]["none"]["attacks"]["plgmi_adaptive"] = {"not_applicable": "no trapdoor"}
    rows = convergence.convergence_rows(results, tolerance=0.05)
    # By hand: none gmi x2 - x1 0.210 [0.157, 0.263], x4 - x2 -0.013 [-0.064, 0.037]; kedmi
    # 0.040 [-0.015, 0.095], then 0 [-0.055, 0.055]; trapmid gmi 0.100 [0.052, 0.148], then
    # -0.003 [-0.051, 0.044] (each seed's binomial floor is above the differences' variance).
    assert rows == [
        ("none", "gmi", 1, top1_text(none[0]), None, "not converged"),
        ("none", "gmi", 2, top1_text(none[1]), paired_gain(none[1], none[0]), "converged"),
        ("none", "gmi", 4, top1_text(none[2]), paired_gain(none[2], none[1]), None),
        ("none", "kedmi", 1, top1_text(kedmi[0]), None, "undecided"),
        ("none", "kedmi", 2, top1_text(kedmi[1]), paired_gain(kedmi[1], kedmi[0]), "undecided"),
        ("none", "kedmi", 4, top1_text(kedmi[2]), paired_gain(kedmi[2], kedmi[1]), None),
        ("trapmid", "gmi", 1, top1_text(trapmid[0]), None, "not converged"),
        ("trapmid", "gmi", 2, top1_text(trapmid[1]), paired_gain(trapmid[1], trapmid[0]),
         "converged"),
        ("trapmid", "gmi", 4, top1_text(trapmid[2]), paired_gain(trapmid[2], trapmid[1]), None),
    ]
    assert paired_gain(none[1], none[0]) == "0.210 [0.157, 0.263]"
    assert paired_gain(trapmid[1], trapmid[0]) == "0.100 [0.052, 0.148]"


def test_two_seeds_use_t_on_one_degree_of_freedom(convergence):
    # Differences 0.20 and 0.24: their variance 0.0008 is above the binomial floor (about
    # 0.0005); t_{0.975, 1} = 12.71 gives 0.220 [-0.034, 0.474]: undecided.
    results = {1: {"none": defense((3, 5), gmi=(500, 520))},
               2: {"none": defense((3, 5), gmi=(700, 760))}}
    rows = convergence.convergence_rows(results, tolerance=0.05)
    assert paired_gain((700, 760), (500, 520)) == "0.220 [-0.034, 0.474]"
    assert [row[4:] for row in rows] == [(None, "undecided"), ("0.220 [-0.034, 0.474]", None)]


def test_one_seed_has_no_gain_interval_and_no_verdict(convergence):
    results = {1: {"none": defense((0,), size=100, gmi=(50,))},
               2: {"none": defense((0,), size=100, gmi=(90,))}}
    rows = convergence.convergence_rows(results, tolerance=0.05)
    assert [row[4:] for row in rows] == [(None, "needs 2+ seeds"), ("0.400 (1 seed)", None)]


@pytest.mark.parametrize("low, high, verdict", [
    (-0.10, 0.05, "converged"),  # the upper end at the tolerance
    (0.05, 0.20, "undecided"),  # the lower end at the tolerance, not above it
    (0.051, 0.20, "not converged"),
    (-0.01, 0.051, "undecided"),
])
def test_the_verdict_reads_the_ends_of_the_gain_interval(convergence, low, high, verdict):
    from trapmid_tf.metrics.intervals import Estimate

    gain = Estimate((low + high) / 2, low, high, seeds=3, samples=600)
    assert convergence.convergence_verdict(gain, 0.05) == verdict
    assert convergence.convergence_verdict(None, 0.05) == "needs 2+ seeds"


def test_the_markdown_has_the_rule_and_one_table_per_defense(convergence):
    results = {scale: {name: defense((0, 1), gmi=(500, 500 + 10 * scale))
                       for name in ("none", "trapmid")} for scale in (1, 2)}
    text = convergence.convergence_markdown(
        convergence.convergence_rows(results, tolerance=0.05), 0.05
    )
    assert "upper end of the next scale's gain is at most 0.05" in text
    assert text.count("| attack | budget scale | top-1 | gain | budget |") == 2
    none, trapmid = text.split("## none\n")[1].split("## trapmid\n")
    assert none.count("| gmi |") == 2 and trapmid.count("| gmi |") == 2
