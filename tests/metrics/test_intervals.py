"""Bootstrap intervals over seeds and reconstructions, and the verdict rules.

Monte-Carlo tolerances below come from one argument, used throughout: the q-quantile of B
independent bootstrap draws sits at a position U in the ideal bootstrap distribution G whose
spread is that of a uniform order statistic, Var(U) ~= q (1 - q) / B (the count of draws
below G's q-quantile is Binomial(B, q)). Bounds are taken at 5 standard deviations
(two-sided probability ~6e-7), or from the binomial distribution itself.
"""

import json
import math

import numpy as np
import pytest
from scipy import stats

from trapmid_tf.metrics import intervals
from trapmid_tf.metrics.intervals import (
    VERDICT_WORDS,
    Estimate,
    bootstrap_difference,
    bootstrap_mean,
    bootstrap_ratio,
    verdict,
)

TAIL = 0.025  # lower tail of a 95% interval
FIVE_SIGMA_TWO_SIDED = 5.7e-7


def monte_carlo_sd(resamples, tail=TAIL):
    """Standard deviation of the bootstrap-distribution position of a quantile estimate."""
    return math.sqrt(tail * (1 - tail) / resamples)


def bernoulli_groups(successes, size=100):
    """One 0/1 array per seed with exactly `successes[i]` ones out of `size`."""
    return [np.repeat([1.0, 0.0], [count, size - count]) for count in successes]


def test_point_estimate_weighs_every_seed_the_same():
    # Seed means 1 and 0: their mean is 1/2, whereas pooling the 5 values would give 4/5.
    estimate = bootstrap_mean([np.ones(4), np.zeros(1)])
    assert estimate.mean == 0.5
    assert (estimate.seeds, estimate.samples) == (2, 5)
    assert estimate.low <= estimate.mean <= estimate.high


def test_one_group_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(3).exponential(size=60)  # continuous: no ties in G
    resamples = 10_000
    ours = bootstrap_mean([values], resamples=resamples, seed=1)
    reference = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(2),
    )
    assert ours.mean == pytest.approx(values.mean(), rel=1e-12)
    # Where our ends fall in scipy's bootstrap distribution. Ours sits at position
    # U ~ q +- sqrt(q(1-q)/B) in G; scipy's empirical CDF at a fixed point adds binomial
    # noise of the same size (B draws): Var = q(1-q) (1/B + 1/B). Plus 1/B for ranks.
    scipy_draws = np.sort(reference.bootstrap_distribution)
    tolerance = 5 * math.sqrt(2) * monte_carlo_sd(resamples) + 1 / resamples  # ~0.011
    for end, position in ((ours.low, TAIL), (ours.high, 1 - TAIL)):
        empirical = np.searchsorted(scipy_draws, end) / resamples
        assert abs(empirical - position) < tolerance
    # The same check in the other direction: scipy's ends in our own draws.
    our_draws = np.sort(
        intervals._resampled_means([values], resamples, np.random.default_rng([1, 0]))
    )
    low, high = reference.confidence_interval
    assert abs(np.searchsorted(our_draws, low) / resamples - TAIL) < tolerance
    assert abs(np.searchsorted(our_draws, high) / resamples - (1 - TAIL)) < tolerance


def test_seed_level_variance_widens_the_interval_beyond_pooling():
    # Three seeds whose reconstructions agree perfectly: inner resampling changes nothing,
    # and the bootstrap distribution is that of the mean of 3 seeds drawn from {0, .5, 1}:
    # 27 equally likely draws, the extremes 0 and 1 having probability 1/27 = 3.7% each.
    # Both 2.5% tails therefore fall on the extremes: the interval is exactly [0, 1].
    # (With B = 10,000 the count of all-0 draws is Binomial(B, 1/27), mean 370, sd 19; the
    # 2.5% position needs more than 250 of them: 6 sd of margin.)
    groups = [np.zeros(100), np.full(100, 0.5), np.ones(100)]
    two_level = bootstrap_mean(groups, resamples=10_000)
    assert (two_level.mean, two_level.low, two_level.high) == (0.5, 0.0, 1.0)
    # Pooled as one group of 300 values with variance 1/6, the ordinary bootstrap gives
    # 0.5 +- 1.96 sqrt(1/6 / 300) = 0.5 +- 0.046: about ten times narrower.
    pooled = bootstrap_mean([np.concatenate(groups)], resamples=10_000)
    half_width = 1.96 * math.sqrt(1 / 6 / 300)
    assert pooled.low == pytest.approx(0.5 - half_width, abs=0.01)
    assert pooled.high == pytest.approx(0.5 + half_width, abs=0.01)


def test_coverage_with_three_seeds_that_agree():
    # 200 data sets of 3 seeds x 100 Bernoulli(0.3) reconstructions. Were the 95% intervals
    # exact, the number covering p would be Binomial(200, 0.95); we require at least its
    # 1e-4 quantile (178). Expected is more: with seeds that agree the two-level bootstrap
    # counts within-seed noise twice. Its variance is (1/G)(G-1)/G s^2/n from the seed draw
    # (the spread of G seed means, each with variance s^2/n) plus (1/G) s^2/n from the inner
    # draws: 5/3 of the true s^2/(nG) for G = 3, i.e. 1.29x wider, covering P(|Z| < 2.53)
    # = 0.989. With 200 data sets that excess (198 vs 190 expected) is not testable against
    # the ceiling of 200, so only the lower side is asserted.
    p, datasets = 0.3, 200
    rng = np.random.default_rng(11)
    covered = 0
    for index in range(datasets):
        groups = [(rng.random(100) < p).astype(np.float64) for _ in range(3)]
        estimate = bootstrap_mean(groups, seed=index)
        covered += estimate.low <= p <= estimate.high
    assert covered >= stats.binom.ppf(1e-4, datasets, 0.95)


def test_coverage_with_one_group_is_nominal():
    # One group of 300 Bernoulli(0.3) values: the ordinary percentile bootstrap, whose
    # coverage at this size is close to 0.95, so the count of covering intervals out of 200
    # must lie in the central 1 - 2e-4 range of Binomial(200, 0.95).
    p, datasets = 0.3, 200
    rng = np.random.default_rng(12)
    covered = 0
    for index in range(datasets):
        estimate = bootstrap_mean([(rng.random(300) < p).astype(np.float64)], seed=index)
        covered += estimate.low <= p <= estimate.high
    low, high = stats.binom.ppf([1e-4, 1 - 1e-4], datasets, 0.95)
    assert low <= covered <= high


def test_same_seed_same_interval_and_other_seed_another():
    groups = [np.random.default_rng(seed).normal(size=30) for seed in range(3)]
    first = bootstrap_mean(groups, seed=5)
    assert bootstrap_mean([g.copy() for g in groups], seed=5) == first
    assert bootstrap_mean(groups, seed=6) != first


def test_a_two_dimensional_array_is_one_group_per_row():
    rows = np.random.default_rng(0).normal(size=(3, 20))
    assert bootstrap_mean(rows, seed=2) == bootstrap_mean(list(rows), seed=2)


def test_chunked_resampling_draws_the_same_means(monkeypatch):
    # Chunks are consecutive draws from the same generator, so bounding the chunk size
    # (here to fewer indices than one group holds) must not change a single draw.
    groups = [np.random.default_rng(seed).normal(size=25) for seed in range(2)]
    whole = bootstrap_mean(groups, resamples=300, seed=4)
    monkeypatch.setattr(intervals, "_MAX_INDICES_PER_CHUNK", 7)
    assert bootstrap_mean(groups, resamples=300, seed=4) == whole


def test_ratio_and_difference_of_groups_without_spread_are_exact():
    # Every resample of a constant group has the same mean, so the intervals collapse.
    defended = [np.full(10, 0.2)] * 3
    baseline = [np.full(20, 0.8)] * 2
    ratio = bootstrap_ratio(defended, baseline)
    assert (ratio.mean, ratio.low, ratio.high) == pytest.approx((0.25, 0.25, 0.25), abs=1e-15)
    assert (ratio.seeds, ratio.samples, ratio.zero_denominators) == (5, 70, 0)
    difference = bootstrap_difference(defended, baseline)
    assert (difference.mean, difference.low, difference.high) == pytest.approx(
        (-0.6, -0.6, -0.6), abs=1e-15
    )


def ratio_or_inf(numerator, denominator):
    """numerator / denominator, +inf where the denominator is 0 (`bootstrap_ratio`'s rule)."""
    return np.divide(
        numerator,
        denominator,
        out=np.full(np.broadcast(numerator, denominator).shape, np.inf),
        where=denominator > 0,
    )


def exact_two_binomial_cdf(combine, first, second, size):
    """Ideal bootstrap CDF of combine(mean a*, mean b*) for two one-seed 0/1 groups.

    Resampling `size` values of a group with `first` ones gives Binomial(size, first/size)
    ones; both sides are independent, so the distribution is a 2-D table of outcomes.
    """
    counts = np.arange(size + 1)
    first_prob = stats.binom.pmf(counts, size, first / size)
    second_prob = stats.binom.pmf(counts, size, second / size)
    values = combine(counts[:, None] / size, counts[None, :] / size).ravel()
    probs = np.outer(first_prob, second_prob).ravel()
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(probs[order])

    def cdf(x, strict):
        index = np.searchsorted(values, x, side="left" if strict else "right")
        return 0.0 if index == 0 else cumulative[index - 1]

    return cdf


@pytest.mark.parametrize(
    "function, combine",
    [(bootstrap_ratio, ratio_or_inf), (bootstrap_difference, np.subtract)],
)
def test_two_sample_interval_against_the_exact_bootstrap_distribution(function, combine):
    # 6 of 20 vs 15 of 20 successes, one seed each (P(denominator 0) = 0.25^20: never).
    # The ideal distribution is discrete, so an end x is right when P(R < x) <= q + tol and
    # P(R <= x) >= q - tol, tol = 5 sd of the quantile position plus 1/B.
    resamples, size = 20_000, 20
    first = [np.repeat([1.0, 0.0], [6, size - 6])]
    second = [np.repeat([1.0, 0.0], [15, size - 15])]
    estimate = function(first, second, resamples=resamples)
    assert estimate.mean == pytest.approx(combine(0.3, 0.75), rel=1e-12)
    cdf = exact_two_binomial_cdf(combine, 6, 15, size)
    tolerance = 5 * monte_carlo_sd(resamples) + 1 / resamples
    for end, position in ((estimate.low, TAIL), (estimate.high, 1 - TAIL)):
        assert cdf(end, strict=True) <= position + tolerance
        assert cdf(end, strict=False) >= position - tolerance


def test_zero_denominators_count_as_unbounded_ratios():
    # One seed of 10 with a single success: a resample misses it with probability
    # 0.9^10 = 0.349, far above the 2.5% upper tail, so the upper end is +inf.
    resamples = 2000
    estimate = bootstrap_ratio([np.ones(2)], [np.eye(10)[0]], resamples=resamples)
    assert estimate.mean == pytest.approx(10.0)
    assert estimate.high == math.inf
    low, high = stats.binom.interval(1 - FIVE_SIGMA_TWO_SIDED, resamples, 0.9**10)
    assert low <= estimate.zero_denominators <= high
    # A baseline with no success at all: the ratio is unbounded everywhere.
    none = bootstrap_ratio([np.ones(3)], [np.zeros(5)] * 2, resamples=resamples)
    assert (none.mean, none.low, none.high) == (math.inf, math.inf, math.inf)
    assert none.zero_denominators == resamples


def test_percentile_interval_matches_numpy_on_finite_draws():
    draws = np.random.default_rng(0).normal(size=101)
    assert intervals._percentile_interval(draws, 0.9) == pytest.approx(
        tuple(np.quantile(draws, [0.05, 0.95])), rel=1e-12
    )


# Clear-cut verdicts: exact success counts per seed out of 100, three seeds each. A side's
# bootstrap variance is about mean(p(1-p)) / 300 (inner draws) + sum((m_i - m)^2) / 9 (seed
# draw, seed means m_i); the ratio's follows by the delta method. Interval ends at +-1.96 sd:
# 10% vs 90%: sd 0.017 each side; ratio 0.11 +- 0.04, far below 0.5.
# 60% vs 90%: ratio 0.67 +- 0.07 (above 0.5); difference -0.30 +- 0.07 (below 0).
# 30-50% vs 90%: point ratio 0.44 < 0.5, but the seed means (.3, .4, .5) add 0.0022 to the
#   defended variance (sd 0.055): ratio 0.44 +- 0.12 reaches above 0.5, so only "lower"
#   (difference -0.50 +- 0.11).
# 90% vs 50%: difference +0.40 +- 0.07 (above 0).
# identical 50%: the difference interval is symmetric around 0 (+-0.08): it holds 0 strictly
#   inside, and lies within a 0.2 margin.
# 48% vs 50%: a point difference of -0.02, well inside +-0.08.
@pytest.mark.parametrize(
    "defended, baseline, margin, word",
    [
        ((10, 11, 9), (90, 91, 89), 0.0, "at most half"),
        ((60, 61, 59), (90, 91, 89), 0.0, "lower"),
        ((30, 40, 50), (90, 91, 89), 0.0, "lower"),
        ((90, 91, 89), (50, 51, 49), 0.0, "not lower"),
        ((50, 51, 49), (50, 51, 49), 0.0, "inconclusive"),
        ((50, 51, 49), (50, 51, 49), 0.2, "not lower"),
        ((47, 48, 49), (50, 51, 49), 0.0, "inconclusive"),
    ],
)
def test_verdict_on_clear_cut_cases(defended, baseline, margin, word):
    result = verdict(bernoulli_groups(defended), bernoulli_groups(baseline), margin=margin)
    assert result.word == word and str(result) == word
    assert result.word in VERDICT_WORDS
    assert result.margin == margin


def test_verdict_reports_the_estimates_it_used():
    defended, baseline = bernoulli_groups((20, 30, 25)), bernoulli_groups((80, 85, 90))
    result = verdict(defended, baseline, seed=3)
    assert result.defended == bootstrap_mean(defended, seed=3)
    assert result.baseline == bootstrap_mean(baseline, seed=3)
    assert result.ratio == bootstrap_ratio(defended, baseline, seed=3)
    assert result.difference == bootstrap_difference(defended, baseline, seed=3)
    assert result.ratio.mean == pytest.approx(result.defended.mean / result.baseline.mean)
    stored = json.loads(json.dumps(result.as_dict()))
    assert stored["word"] == "at most half"
    assert stored["ratio"]["high"] == result.ratio.high
    assert stored["defended"]["seeds"] == 3


def test_estimate_prints_mean_and_interval():
    assert str(Estimate(0.4213, 0.3092, 0.5471, seeds=3, samples=300)) == "0.42 [0.31, 0.55]"
    assert str(Estimate(math.inf, 1.0, math.inf, seeds=2, samples=20)) == "inf [1.00, inf]"


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: bootstrap_mean([]), "`groups`"),
        (lambda: bootstrap_mean(3), "`groups`"),
        (lambda: bootstrap_mean([np.ones(3), np.array([])]), "`groups[1]`"),
        (lambda: bootstrap_mean([np.array([0.1, np.nan])]), "`groups[0]`"),
        (lambda: bootstrap_mean([np.ones((2, 2))]), "`groups[0]`"),
        (lambda: bootstrap_mean([np.ones(3)], confidence=0.0), "`confidence`"),
        (lambda: bootstrap_mean([np.ones(3)], confidence=1.0), "`confidence`"),
        (lambda: bootstrap_mean([np.ones(3)], confidence=95), "`confidence`"),
        (lambda: bootstrap_mean([np.ones(3)], confidence=math.nan), "`confidence`"),
        (lambda: bootstrap_mean([np.ones(3)], resamples=0), "`resamples`"),
        (lambda: bootstrap_mean([np.ones(3)], seed=-1), "`seed`"),
        (lambda: bootstrap_ratio([np.ones(3)], [np.ones(2), -np.ones(2)]),
         "`denominator_groups[1]`"),
        (lambda: bootstrap_difference([np.ones(3)], []), "`b_groups`"),
        (lambda: verdict([np.ones(3)], [np.ones(3)], margin=-0.1), "`margin`"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        call()
