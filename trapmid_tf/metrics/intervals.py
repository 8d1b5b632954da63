"""Confidence intervals over training seeds, and the report's verdicts.

The training seed is the unit. A privacy metric is measured per reconstruction (top-1
success 0/1, KNN distance, ...) for each target trained with a different seed; the estimate is
the mean of the per-seed means, so every seed weighs the same however many reconstructions
it has. The same training seed gives every defense the same data order, attack latents and
prior, so a defense and the unprotected target of the same seed form a pair.

* One arm (`seed_mean`): a Student t interval on S - 1 degrees of freedom over the S seed
  means. For 0/1 outcomes (`binary=True`) the variance of a seed mean is taken as at least
  its binomial variance within the seed (so that seeds which happen to agree do not give a
  zero-width interval), the interval is clipped to [0, 1], and where every outcome is 0 or
  every one is 1 it is the exact Clopper-Pearson interval over the pooled reconstructions.
  With one seed there is no seed-level interval: 0/1 outcomes get Clopper-Pearson, other
  values a t interval, over the reconstructions within that seed (`method` says so), which
  leave the training's variation out.
* Pairs (`compare`), seeds matched by number: per seed the difference of top-1 rates
  (defended - baseline) and the log-ratio log(defended rate / baseline rate), each rate with
  Haldane's correction (k + 0.5) / (n + 1) so that a seed with 0 successes has a finite log;
  a Student t interval on S - 1 degrees of freedom over the S per-seed values, the ratio
  reported as exp of the log-ratio interval. As for one arm, the variance of a per-seed value
  is taken as at least its binomial (delta-method, for the log) variance within the seed.
* Verdicts (`decide`): each comparison's three claims are one-sided t tests on the same
  statistics (see `decide`); Holm's step-down correction runs over every test of every
  comparison given to it (all the verdicts of one report), and a claim is made only where
  its Holm-adjusted p-value is below the level. The intervals shown stay unadjusted 95%.

Coverage of the 95% intervals, measured by tests/metrics/test_intervals.py (2000 simulated
data sets each, 100 reconstructions per seed and arm, seed success rates spread by about 0.1
around 0.5 and 0.28, the seed effect shared by the two arms or each arm's own): difference
and ratio 0.985-0.994 with 3 seeds, 0.953-0.971 with 5. With 3 seeds they are conservative:
the t quantile on 2 degrees of freedom (4.30) pays for a seed variance estimated from three
values even where the binomial floor already holds most of it. The two-level percentile
bootstrap the report and recipes/convergence.py used before (each arm resampled on its own,
seeds then reconstructions; removed) covers the difference only 0.87 of the time with 3
seeds whose rates vary on their own (the review measured 0.86): three seed means under
resampling understate their spread by a factor 2/3 in variance.
"""

import dataclasses

import numpy as np
from scipy import special, stats

from trapmid_tf.validation import (
    as_score_vector,
    check_non_negative_float,
    check_non_negative_int,
    check_open_unit_interval,
    check_positive_int,
)

AT_MOST_HALF = "at most half"
LOWER = "lower"
NOT_LOWER = "not lower"
INCONCLUSIVE = "inconclusive"
VERDICT_WORDS = (AT_MOST_HALF, LOWER, NOT_LOWER, INCONCLUSIVE)
# The word of a comparison with one training seed: no seed-level interval, no verdict.
NEEDS_SEEDS = "needs 2+ seeds"

# How an interval was computed (`Estimate.method`).
T_OVER_SEEDS = "t over seeds"
PAIRED_T = "paired t over seeds"
PAIRED_T_LOG_RATIO = "paired t over seeds, exp of the log-ratio's"
CLOPPER_PEARSON_POOLED = "Clopper-Pearson over the pooled reconstructions"
CLOPPER_PEARSON_ONE_SEED = "Clopper-Pearson within one training seed"
T_ONE_SEED = "t within one training seed"
ONE_VALUE = "one value: no interval"


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval.

    Attributes:
        mean: The point estimate (mean of per-seed means, or their difference or ratio).
        low: Lower end of the interval.
        high: Upper end of the interval.
        seeds: Number of training seeds it rests on (pairs, for a comparison).
        samples: Number of per-reconstruction values it rests on (both arms summed for a
            comparison).
        confidence: Confidence level of the interval, in (0, 1).
        method: How the interval was computed, one of this module's method names.
    """

    mean: float
    low: float
    high: float
    seeds: int
    samples: int
    confidence: float = 0.95
    method: str = T_OVER_SEEDS

    def __str__(self):
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def as_dict(self):
        """The fields as a dict of python values, for `json.dump`.

        Returns:
            `{field name: value}`.
        """
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A defended top-1 rate against its baseline's, paired by training seed.

    Attributes:
        defended: `seed_mean` of the defended outcomes over the paired seeds.
        baseline: `seed_mean` of the baseline outcomes over the paired seeds.
        difference: Defended - baseline rate (paired t), or None with one seed.
        ratio: Defended / baseline rate (exp of the paired log-ratio's t interval), or None
            with one seed.
        p_values: `{claim word: unadjusted one-sided p-value}` for `AT_MOST_HALF`, `LOWER`
            and `NOT_LOWER`; empty with one seed.
        seeds: The paired seeds, in the baseline's order (positions when no seed numbers
            were given).
        margin: The reduction the "not lower" test treats as negligible.
    """

    defended: Estimate
    baseline: Estimate
    difference: Estimate | None
    ratio: Estimate | None
    p_values: dict
    seeds: tuple
    margin: float = 0.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The verdict word on one comparison, with the evidence it rests on.

    Attributes:
        word: One of `VERDICT_WORDS`, or `NEEDS_SEEDS`; see `decide`.
        comparison: The `Comparison` judged.
        adjusted_p_values: `{claim word: Holm-adjusted p-value}`; empty with one seed.
        tests: Number of one-sided tests in the Holm family.
    """

    word: str
    comparison: Comparison
    adjusted_p_values: dict
    tests: int

    def __str__(self):
        return self.word

    def as_dict(self):
        """The verdict and its evidence as nested dicts, for `json.dump`.

        Returns:
            `{"word": ..., "comparison": {...}, "adjusted_p_values": {...}, "tests": ...}`.
        """
        return dataclasses.asdict(self)


def clopper_pearson(successes, trials, confidence=0.95):
    """Exact (Clopper-Pearson) interval of a binomial rate.

    Args:
        successes: Integer in [0, `trials`].
        trials: Integer >= 1.
        confidence: Confidence level, in (0, 1).

    Returns:
        `(low, high)`: the `(1 - confidence) / 2` quantile of Beta(k, n - k + 1) (0 when
        k = 0) and the `(1 + confidence) / 2` quantile of Beta(k + 1, n - k) (1 when k = n).

    Raises:
        ValueError: If an argument is out of range.
    """
    trials = check_positive_int("trials", trials)
    check_non_negative_int("successes", successes)
    if successes > trials:
        raise ValueError(
            f"`successes` must be at most `trials` ({trials}); received {successes!r}."
        )
    tail = (1.0 - check_open_unit_interval("confidence", confidence)) / 2.0
    low = 0.0 if successes == 0 else stats.beta.ppf(tail, successes, trials - successes + 1)
    high = 1.0 if successes == trials else stats.beta.ppf(1 - tail, successes + 1,
                                                          trials - successes)
    return float(low), float(high)


def seed_mean(groups, confidence=0.95, binary=False):
    """Mean of per-seed means with its interval over training seeds (see the module doc).

    Args:
        groups: One 1-D array of per-reconstruction values per training seed (a list of
            arrays of any lengths, or a 2-D array with one row per seed); finite values.
        confidence: Confidence level of the interval, in (0, 1).
        binary: Whether the values are 0/1 outcomes (e.g. top-1 success): then the
            interval is clipped to [0, 1], a seed mean's variance is at least its binomial
            variance, and Clopper-Pearson is used where all outcomes are equal or there is
            one seed.

    Returns:
        An `Estimate`; its `method` says which interval it is.

    Raises:
        ValueError: If `groups` is empty, a group is not a non-empty 1-D array of finite
            values (of 0s and 1s when `binary`), or `confidence` is not in (0, 1).

    Example:
        Three seeds of 100 outcomes with 20, 30 and 40 successes: seed means 0.2, 0.3, 0.4,
        standard error 0.1 / sqrt(3), t quantile 4.303 on 2 degrees of freedom.

        >>> groups = [np.arange(100) < k for k in (20, 30, 40)]
        >>> print(seed_mean(groups, binary=True))
        0.30 [0.05, 0.55]
    """
    groups = _checked_groups(groups, "groups", binary)
    confidence = check_open_unit_interval("confidence", confidence)
    means = np.array([values.mean() for values in groups])
    count, samples = len(groups), _sample_count(groups)
    pooled = float(sum(values.sum() for values in groups))
    if binary and (count == 1 or pooled in (0.0, samples)):
        low, high = clopper_pearson(int(round(pooled)), samples, confidence)
        method = CLOPPER_PEARSON_ONE_SEED if count == 1 else CLOPPER_PEARSON_POOLED
        mean = float(means.mean())
    elif count == 1 and groups[0].size == 1:
        mean = low = high = float(means[0])
        method = ONE_VALUE
    else:
        values, method = (groups[0], T_ONE_SEED) if count == 1 else (means, T_OVER_SEEDS)
        floor = float(np.mean(_binomial_variance(groups))) if binary else 0.0
        mean, low, high, _ = _t_interval(values, floor, confidence)
        if binary:
            low, high = max(low, 0.0), min(high, 1.0)
    return Estimate(mean=mean, low=low, high=high, seeds=count, samples=samples,
                    confidence=confidence, method=method)


def compare(defended_groups, baseline_groups, defended_seeds=None, baseline_seeds=None,
            confidence=0.95, margin=0.0):
    """A defended top-1 rate against its baseline's, paired by training seed.

    The seeds both arms have are paired (in the baseline's order); a seed only one arm has
    is left out. Per pair, the difference of the rates and the log-ratio of the
    Haldane-corrected rates (k + 0.5) / (n + 1); their intervals are Student t on S - 1
    degrees of freedom, each per-seed value's variance taken as at least its within-seed
    binomial (for the log, delta-method (1 - p) / (n p)) variance at the corrected rates.

    The one-sided tests, on the same t statistics: `AT_MOST_HALF` rejects a ratio >= 0.5,
    `LOWER` a difference >= 0, `NOT_LOWER` a difference <= -`margin` (a reduction larger
    than `margin`).

    Args:
        defended_groups: Per-seed 1-D arrays of 0/1 outcomes of the defended target.
        baseline_groups: Per-seed 1-D arrays of 0/1 outcomes of the baseline target.
        defended_seeds: The defended groups' seed numbers, in order; None pairs the groups
            by position (then both need the same number of groups).
        baseline_seeds: The baseline groups' seed numbers, in order; None as above.
        confidence: Confidence level of the intervals, in (0, 1).
        margin: Reduction (in top-1) below which "not lower" may still be said, >= 0.

    Returns:
        A `Comparison`; with one paired seed it has no difference, ratio or p-values.

    Raises:
        ValueError: If a group is not a non-empty 1-D array of 0s and 1s, the seed numbers
            do not match their groups, no seed is shared, `confidence` is not in (0, 1) or
            `margin` is not a finite number >= 0.
    """
    check_non_negative_float("margin", margin)
    confidence = check_open_unit_interval("confidence", confidence)
    defended_groups = _checked_groups(defended_groups, "defended_groups", binary=True)
    baseline_groups = _checked_groups(baseline_groups, "baseline_groups", binary=True)
    seeds, defended_groups, baseline_groups = _paired(
        defended_groups, baseline_groups, defended_seeds, baseline_seeds
    )
    defended = seed_mean(defended_groups, confidence, binary=True)
    baseline = seed_mean(baseline_groups, confidence, binary=True)
    if len(seeds) == 1:
        return Comparison(defended, baseline, None, None, {}, seeds, float(margin))
    rates = [np.array([values.mean() for values in groups])
             for groups in (defended_groups, baseline_groups)]
    corrected = [_haldane(groups) for groups in (defended_groups, baseline_groups)]
    sizes = [np.array([values.size for values in groups], np.float64)
             for groups in (defended_groups, baseline_groups)]
    differences = rates[0] - rates[1]
    difference_floor = np.mean(_binomial_variance(defended_groups)
                               + _binomial_variance(baseline_groups))
    log_ratios = np.log(corrected[0]) - np.log(corrected[1])
    log_floor = np.mean(sum((1 - p) / (n * p) for p, n in zip(corrected, sizes)))
    settings = dict(seeds=len(seeds), samples=defended.samples + baseline.samples,
                    confidence=confidence)
    mean, low, high, difference_se = _t_interval(differences, difference_floor, confidence)
    difference = Estimate(mean=mean, low=max(low, -1.0), high=min(high, 1.0),
                          method=PAIRED_T, **settings)
    mean, low, high, log_se = _t_interval(log_ratios, log_floor, confidence)
    ratio = Estimate(mean=float(np.exp(mean)), low=float(np.exp(low)), high=float(np.exp(high)),
                     method=PAIRED_T_LOG_RATIO, **settings)
    freedom = len(seeds) - 1  # special.stdtr(df, t): Student t's CDF, as stats.t.cdf
    p_values = {
        AT_MOST_HALF: float(special.stdtr(freedom, (mean - np.log(0.5)) / log_se)),
        LOWER: float(special.stdtr(freedom, difference.mean / difference_se)),
        NOT_LOWER: float(special.stdtr(freedom, -(difference.mean + margin) / difference_se)),
    }
    return Comparison(defended, baseline, difference, ratio, p_values, seeds, float(margin))


def holm(p_values):
    """Holm's step-down adjusted p-values.

    The i-th smallest of m p-values becomes the running maximum of (m - j + 1) p_(j) over
    j <= i, capped at 1; rejecting where the adjusted value is below a level controls the
    chance of any false rejection at that level, whatever the tests' dependence.

    Args:
        p_values: 1-D sequence of p-values in [0, 1].

    Returns:
        A float64 array of the adjusted p-values, in the order given.

    Raises:
        ValueError: If a p-value is not in [0, 1].
    """
    p_values = np.asarray(p_values, np.float64).reshape(-1)
    if np.any(~(p_values >= 0) | ~(p_values <= 1)):
        raise ValueError(f"`p_values` must lie in [0, 1]; received {p_values.tolist()!r}.")
    order = np.argsort(p_values, kind="stable")
    scaled = (p_values.size - np.arange(p_values.size)) * p_values[order]
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def decide(comparisons, level=0.05):
    """The verdict words of one report's comparisons, Holm-corrected over all of them.

    Every comparison with two or more seeds contributes its three one-sided tests
    (`Comparison.p_values`) to one Holm family. The word of a comparison is, in this order:
    "at most half" if its `AT_MOST_HALF` test is rejected, "lower" if its `LOWER` test is,
    "not lower" if its `NOT_LOWER` test is (the data rule out a reduction larger than the
    margin), else "inconclusive"; a test is rejected where its Holm-adjusted p-value is
    below `level`. A comparison with one seed gets `NEEDS_SEEDS` and no test.

    Args:
        comparisons: `Comparison`s from `compare`, all the verdicts of one report.
        level: Family-wise error rate, in (0, 1).

    Returns:
        A list of `Verdict`, one per comparison, in order.

    Raises:
        ValueError: If `level` is not in (0, 1).
    """
    level = check_open_unit_interval("level", level)
    claims = (AT_MOST_HALF, LOWER, NOT_LOWER)
    tested = [index for index, found in enumerate(comparisons) if found.p_values]
    adjusted = holm([comparisons[index].p_values[claim] for index in tested for claim in claims])
    adjusted_by_index = {
        index: dict(zip(claims, adjusted[position * 3 : position * 3 + 3].tolist()))
        for position, index in enumerate(tested)
    }
    verdicts = []
    for index, found in enumerate(comparisons):
        adjusted_p = adjusted_by_index.get(index, {})
        word = NEEDS_SEEDS if not adjusted_p else next(
            (claim for claim in claims if adjusted_p[claim] < level), INCONCLUSIVE
        )
        verdicts.append(Verdict(word, found, adjusted_p, int(adjusted.size)))
    return verdicts


def _t_interval(values, variance_floor, confidence):
    """`(mean, low, high, standard error)`: Student t on `len(values) - 1` df over `values`.

    The sample variance is raised to `variance_floor` where it is below it.
    """
    variance = max(float(np.var(values, ddof=1)), variance_floor)
    standard_error = np.sqrt(variance / values.size)
    # special.stdtrit(df, q): Student t's quantile, as stats.t.ppf (a fraction of its cost).
    half_width = special.stdtrit(values.size - 1, 0.5 + confidence / 2.0) * standard_error
    mean = float(np.mean(values))
    return mean, float(mean - half_width), float(mean + half_width), float(standard_error)


def _haldane(groups):
    """Per-seed success rates with Haldane's correction, (k + 0.5) / (n + 1)."""
    return np.array([(values.sum() + 0.5) / (values.size + 1) for values in groups])


def _binomial_variance(groups):
    """Per-seed binomial variance of a seed's rate, p (1 - p) / n at the corrected rate."""
    corrected = _haldane(groups)
    return corrected * (1 - corrected) / np.array([values.size for values in groups])


def _paired(defended_groups, baseline_groups, defended_seeds, baseline_seeds):
    """`(seeds, defended groups, baseline groups)` of the seeds both arms have."""
    if defended_seeds is None and baseline_seeds is None:
        if len(defended_groups) != len(baseline_groups):
            raise ValueError(
                f"`defended_groups` and `baseline_groups` must have one group per seed each "
                f"when no seed numbers are given; received {len(defended_groups)} and "
                f"{len(baseline_groups)} groups."
            )
        positions = tuple(range(len(baseline_groups)))
        return positions, defended_groups, baseline_groups
    named = {}
    for name, seeds, groups in (("defended_seeds", defended_seeds, defended_groups),
                                ("baseline_seeds", baseline_seeds, baseline_groups)):
        if seeds is None or len(seeds) != len(groups) or len(set(seeds)) != len(seeds):
            raise ValueError(
                f"`{name}` must list {len(groups)} distinct seed numbers, one per group; "
                f"received {seeds!r}."
            )
        named[name] = dict(zip(seeds, groups))
    common = tuple(seed for seed in baseline_seeds if seed in named["defended_seeds"])
    if not common:
        raise ValueError(
            f"`defended_seeds` and `baseline_seeds` must share a seed; received "
            f"{list(defended_seeds)!r} and {list(baseline_seeds)!r}."
        )
    return (common, [named["defended_seeds"][seed] for seed in common],
            [named["baseline_seeds"][seed] for seed in common])


def _checked_groups(groups, name, binary=False):
    """`groups` as a non-empty list of finite float64 vectors (one per seed)."""
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise ValueError(
            f"`{name}` must be a list of 1-D arrays (one per training seed); received {groups!r}."
        )
    checked = [as_score_vector(values, f"{name}[{index}]") for index, values in enumerate(groups)]
    if not checked:
        raise ValueError(
            f"`{name}` must hold at least one group (one per training seed); received none."
        )
    if binary:
        for index, values in enumerate(checked):
            if np.any((values != 0) & (values != 1)):
                raise ValueError(
                    f"`{name}[{index}]` must hold 0/1 outcomes; received values "
                    f"{np.unique(values)[:5].tolist()!r}..."
                )
    return checked


def _sample_count(groups):
    """Total number of values over all groups."""
    return int(sum(values.size for values in groups))
