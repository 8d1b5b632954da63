"""Confidence intervals over training seeds and reconstructions, and the report's verdicts.

A privacy metric is measured per reconstruction (top-1 success 0/1, KNN distance, ...) for
each target trained with a different seed. The estimate is the mean of the per-seed means, so
every seed weighs the same however many reconstructions it has; its interval comes from a
two-level percentile bootstrap: draw the seeds with replacement, then each drawn seed's
reconstructions with replacement, and take the mean of the drawn seeds' means.

How far to trust it: with many seeds the two-level bootstrap is a standard choice (Davison &
Hinkley 1997, sec. 3.8). With the three seeds a report uses, it errs both ways. When the seeds
agree (all variation is within a seed), the within-seed noise is counted twice, once through
the spread of the seed means and once through the inner draws, and the interval is too wide
(variance 5/3 of the true one for three seeds). When the seeds disagree far more than their
reconstructions do, only the seed draw matters, and the spread of three seed means under
resampling understates their variance by a factor 2/3 (and takes only 10 distinct values), so
the interval is too narrow. Measured coverage of 95% intervals for a Bernoulli mean of 0.3,
1000 simulated data sets each: 3 seeds x 100 that agree 0.98, one group of 300 0.96, 3 seeds
x 100 whose success rates are 0.1, 0.3 or 0.5 at random 0.77 (10 seeds: 0.99 and 0.92). So
with three seeds that disagree, a verdict is less certain than its 95% suggests; more seeds
are the remedy. `verdict` speaks only when an interval is clear of the threshold it tests.
"""

import dataclasses

import numpy as np

from trapmid_tf.attacks.inversion import check_non_negative_float, check_non_negative_int
from trapmid_tf.metrics._checks import as_positive_int, as_score_vector

AT_MOST_HALF = "at most half"
LOWER = "lower"
NOT_LOWER = "not lower"
INCONCLUSIVE = "inconclusive"
VERDICT_WORDS = (AT_MOST_HALF, LOWER, NOT_LOWER, INCONCLUSIVE)

# Bound on the random indices drawn at once when resampling one seed's reconstructions
# (8 bytes each: 32 MiB), so that many resamples of a large group do not exhaust memory.
_MAX_INDICES_PER_CHUNK = 2**22


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval.

    Attributes:
        mean: The point estimate (mean of per-seed means, or their ratio or difference).
        low: Lower end of the interval.
        high: Upper end of the interval (+inf when a ratio is unbounded, see
            `bootstrap_ratio`).
        seeds: Number of seed groups the estimate rests on (both sides summed for a ratio
            or a difference).
        samples: Number of per-reconstruction values it rests on (both sides summed for a
            ratio or a difference).
        confidence: Confidence level of the interval, in (0, 1).
        zero_denominators: For a ratio, how many resamples had a denominator mean of 0 and
            were counted as +inf; 0 otherwise.
    """

    mean: float
    low: float
    high: float
    seeds: int
    samples: int
    confidence: float = 0.95
    zero_denominators: int = 0

    def __str__(self):
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def as_dict(self):
        """The fields as a dict of python numbers, for `json.dump`.

        Returns:
            `{field name: value}`; an unbounded end is `float("inf")`, which python's `json`
            writes as `Infinity`.
        """
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The verdict word on a defended metric against its baseline, with its evidence.

    Attributes:
        word: One of `VERDICT_WORDS`; see `verdict` for the rules.
        defended: `bootstrap_mean` of the defended target's values.
        baseline: `bootstrap_mean` of the baseline (e.g. unprotected) target's values.
        ratio: `bootstrap_ratio` defended / baseline.
        difference: `bootstrap_difference` defended - baseline.
        margin: The reduction the "not lower" rule treats as negligible.
    """

    word: str
    defended: Estimate
    baseline: Estimate
    ratio: Estimate
    difference: Estimate
    margin: float = 0.0

    def __str__(self):
        return self.word

    def as_dict(self):
        """The verdict and its estimates as nested dicts, for `json.dump`.

        Returns:
            `{"word": ..., "defended": {...}, "baseline": {...}, "ratio": {...},
            "difference": {...}, "margin": ...}`.
        """
        return dataclasses.asdict(self)


def bootstrap_mean(groups, confidence=0.95, resamples=2000, seed=0):
    """Mean of per-seed means with a two-level percentile bootstrap interval.

    Args:
        groups: One 1-D array of per-reconstruction values per training seed (a list of
            arrays of any lengths, or a 2-D array with one row per seed); finite values.
        confidence: Confidence level of the interval, in (0, 1).
        resamples: Number of bootstrap resamples.
        seed: Integer >= 0; the same inputs and seed give the same interval.

    Returns:
        An `Estimate`. With one group, the interval is the ordinary percentile bootstrap
        over that group's values.

    Raises:
        ValueError: If `groups` is empty, a group is not a non-empty 1-D array of finite
            values, `confidence` is not in (0, 1), `resamples` is not an integer >= 1 or
            `seed` not an integer >= 0.

    Example:
        Three seeds whose reconstructions all agree: only the seed draw varies, and each
        extreme (the same seed drawn three times) has bootstrap probability 1/27 > 2.5%.

        >>> groups = [np.zeros(50), np.full(50, 0.5), np.ones(50)]
        >>> print(bootstrap_mean(groups))
        0.50 [0.00, 1.00]
    """
    groups = _checked_groups(groups, "groups")
    confidence, resamples = _checked_settings(confidence, resamples, seed)
    draws = _resampled_means(groups, resamples, np.random.default_rng([seed, 0]))
    low, high = _percentile_interval(draws, confidence)
    return Estimate(
        mean=_mean_of_means(groups),
        low=low,
        high=high,
        seeds=len(groups),
        samples=_sample_count(groups),
        confidence=confidence,
    )


def bootstrap_ratio(numerator_groups, denominator_groups, confidence=0.95, resamples=2000, seed=0):
    """Ratio of two means of per-seed means (e.g. defended / unprotected top-1), with interval.

    Both sides are resampled independently, each as in `bootstrap_mean` (with the same
    `seed`, the numerator's draws are those of `bootstrap_mean(numerator_groups, seed=seed)`).
    Values must be >= 0, so a ratio is >= 0. A zero denominator mean (in the data or in a
    resample) makes the ratio unbounded: it is set to +inf, whatever the numerator. Such
    resamples are kept, not dropped, since dropping them would keep only the resamples where
    the baseline did better; they sort above every finite ratio, so they can only raise the
    interval (its upper end is +inf once they exceed the upper tail), and their number is
    reported in `Estimate.zero_denominators`.

    Args:
        numerator_groups: Per-seed 1-D arrays of values >= 0 for the numerator.
        denominator_groups: Per-seed 1-D arrays of values >= 0 for the denominator.
        confidence: Confidence level of the interval, in (0, 1).
        resamples: Number of bootstrap resamples.
        seed: Integer >= 0; the same inputs and seed give the same interval.

    Returns:
        An `Estimate` of the ratio (`seeds` and `samples` count both sides).

    Raises:
        ValueError: As `bootstrap_mean`, or if a value is negative.
    """
    return _two_sample_estimate(
        numerator_groups,
        denominator_groups,
        ("numerator_groups", "denominator_groups"),
        confidence,
        resamples,
        seed,
        ratio=True,
    )


def bootstrap_difference(a_groups, b_groups, confidence=0.95, resamples=2000, seed=0):
    """Difference a - b of two means of per-seed means, with interval.

    Both sides are resampled independently, each as in `bootstrap_mean`, with the same
    draws as `bootstrap_ratio(a_groups, b_groups, seed=seed)`.

    Args:
        a_groups: Per-seed 1-D arrays of finite values for the first mean.
        b_groups: Per-seed 1-D arrays of finite values for the mean subtracted.
        confidence: Confidence level of the interval, in (0, 1).
        resamples: Number of bootstrap resamples.
        seed: Integer >= 0; the same inputs and seed give the same interval.

    Returns:
        An `Estimate` of the difference (`seeds` and `samples` count both sides).

    Raises:
        ValueError: As `bootstrap_mean`.
    """
    return _two_sample_estimate(
        a_groups, b_groups, ("a_groups", "b_groups"), confidence, resamples, seed, ratio=False
    )


def verdict(defended_groups, baseline_groups, confidence=0.95, resamples=2000, seed=0, margin=0.0):
    """Whether a defended metric (e.g. attack top-1) is lower than its baseline, and by how much.

    The rules, tried in this order, each on the two-sided `confidence` interval (so each
    claim is a one-sided test at level (1 - confidence) / 2):

    * "at most half": the ratio's upper end is <= 0.5: the data rule out a defended value
      above half the baseline. (It comes first because it is the stronger claim: the
      ratio and the difference come from the same resamples, so in practice it implies
      "lower".)
    * "lower": the difference's upper end is < 0: the data rule out no reduction at all.
    * "not lower": the difference's lower end is >= -`margin`: the data rule out a reduction
      larger than `margin`. With the default `margin=0` this asks for evidence that the
      defended value is at least the baseline; an absence of evidence of a reduction is not
      enough.
    * "inconclusive": otherwise (the interval is compatible with a reduction and with
      none). With a few seeds and close values this is the honest answer.

    Several verdicts in one report are separate tests: no correction for multiple
    comparisons is applied.

    Args:
        defended_groups: Per-seed 1-D arrays of values >= 0 for the defended target.
        baseline_groups: Per-seed 1-D arrays of values >= 0 for the baseline target.
        confidence: Confidence level of the intervals, in (0, 1).
        resamples: Number of bootstrap resamples.
        seed: Integer >= 0; the same inputs and seed give the same verdict.
        margin: Reduction (in the metric's units) below which "not lower" may still be
            said, >= 0.

    Returns:
        A `Verdict` with the word and the four estimates it was based on.

    Raises:
        ValueError: As `bootstrap_ratio`, or if `margin` is not a finite number >= 0.
    """
    check_non_negative_float("margin", margin)
    settings = {"confidence": confidence, "resamples": resamples, "seed": seed}
    ratio = bootstrap_ratio(defended_groups, baseline_groups, **settings)
    difference = bootstrap_difference(defended_groups, baseline_groups, **settings)
    if ratio.high <= 0.5:
        word = AT_MOST_HALF
    elif difference.high < 0:
        word = LOWER
    elif difference.low >= -margin:
        word = NOT_LOWER
    else:
        word = INCONCLUSIVE
    return Verdict(
        word=word,
        defended=bootstrap_mean(defended_groups, **settings),
        baseline=bootstrap_mean(baseline_groups, **settings),
        ratio=ratio,
        difference=difference,
        margin=float(margin),
    )


def _two_sample_estimate(first_groups, second_groups, names, confidence, resamples, seed, ratio):
    """First mean / second mean if `ratio` else their difference, sides resampled independently."""
    combine = _ratio if ratio else np.subtract
    first_groups = _checked_groups(first_groups, names[0], non_negative=ratio)
    second_groups = _checked_groups(second_groups, names[1], non_negative=ratio)
    confidence, resamples = _checked_settings(confidence, resamples, seed)
    first_draws = _resampled_means(first_groups, resamples, np.random.default_rng([seed, 0]))
    second_draws = _resampled_means(second_groups, resamples, np.random.default_rng([seed, 1]))
    draws = combine(first_draws, second_draws)
    low, high = _percentile_interval(draws, confidence)
    return Estimate(
        mean=float(combine(_mean_of_means(first_groups), _mean_of_means(second_groups))),
        low=low,
        high=high,
        seeds=len(first_groups) + len(second_groups),
        samples=_sample_count(first_groups) + _sample_count(second_groups),
        confidence=confidence,
        zero_denominators=int(np.sum(second_draws == 0)) if ratio else 0,
    )


def _ratio(numerator, denominator):
    """`numerator / denominator` for means >= 0, +inf where the denominator is 0."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, np.inf)


def _checked_groups(groups, name, non_negative=False):
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
    if non_negative:
        for index, values in enumerate(checked):
            if np.any(values < 0):
                raise ValueError(
                    f"`{name}[{index}]` must hold values >= 0 for a ratio; received minimum "
                    f"{values.min()!r}."
                )
    return checked


def _checked_settings(confidence, resamples, seed):
    """Validated `(confidence, resamples)`; also checks `seed`."""
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float, np.integer, np.floating))
        or not 0 < confidence < 1
    ):
        raise ValueError(f"`confidence` must be a number in (0, 1); received {confidence!r}.")
    check_non_negative_int("seed", seed)
    return float(confidence), as_positive_int(resamples, "resamples")


def _mean_of_means(groups):
    """The point estimate: each seed's mean, averaged with equal weights."""
    return float(np.mean([values.mean() for values in groups]))


def _sample_count(groups):
    """Total number of values over all groups."""
    return int(sum(values.size for values in groups))


def _resampled_means(groups, resamples, rng):
    """`(resamples,)` two-level bootstrap draws of the mean of per-seed means.

    Each resample draws `len(groups)` seeds with replacement; each drawn seed contributes the
    mean of its values resampled with replacement (a fresh resample every time it is drawn).
    """
    chosen = rng.integers(0, len(groups), size=(resamples, len(groups)))
    drawn_means = np.empty(chosen.shape)
    for index, values in enumerate(groups):  # a loop over seeds; resamples are vectorised
        slots = chosen == index
        drawn_means[slots] = _resampled_group_means(values, int(slots.sum()), rng)
    return drawn_means.mean(axis=1)


def _resampled_group_means(values, count, rng):
    """`(count,)` means of `values` resampled with replacement, drawn in bounded chunks."""
    rows_per_chunk = max(1, _MAX_INDICES_PER_CHUNK // values.size)
    chunks = [
        values[rng.integers(0, values.size, size=(min(rows_per_chunk, count - start), values.size))]
        .mean(axis=1)
        for start in range(0, count, rows_per_chunk)
    ]
    return np.concatenate(chunks) if chunks else np.empty(0)


def _percentile_interval(draws, confidence):
    """`(low, high)`: the draws' (1 -/+ confidence) / 2 quantiles, as python floats.

    Linear interpolation between order statistics, as `np.quantile`'s default (and
    `scipy.stats.bootstrap`'s percentile method), except that an end whose interpolation
    touches a +inf draw is +inf (`np.quantile` returns NaN there).
    """
    ordered = np.sort(draws)
    tail = (1.0 - confidence) / 2.0
    positions = np.array([tail, 1.0 - tail]) * (ordered.size - 1)
    below = np.floor(positions).astype(np.int64)
    above = np.minimum(below + 1, ordered.size - 1)
    weight = positions - below
    with np.errstate(invalid="ignore"):
        ends = ordered[below] + weight * (ordered[above] - ordered[below])
    unbounded = np.isposinf(ordered[below]) | (np.isposinf(ordered[above]) & (weight > 0))
    ends = np.where(unbounded, np.inf, ends)
    return float(ends[0]), float(ends[1])


