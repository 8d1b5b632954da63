"""The measured distance from convergence: its records and the report paragraph built from them."""

import pytest

from trapmid_tf.attacks import suite
from trapmid_tf.experiments.measured_convergence import MEASURED_GAPS, MeasuredGap
from trapmid_tf.report.markdown import gap_paragraph


def _gap(**gains):
    return MeasuredGap(
        preset="quick", command="python recipes/convergence.py --preset=quick", date="2026-12-02",
        seeds=(0,), reconstructions=100,
        gains={name: dict(mean=mean, low=low, high=high) for name, (mean, low, high) in gains.items()},
    ).as_dict()


def test_paragraph_names_the_attacks_that_gained_more_than_the_tolerance():
    text = gap_paragraph(_gap(gmi=(0.11, 0.01, 0.21), plgmi=(-0.05, -0.14, 0.04),
                              mi_face=(0.05, -0.06, 0.16)))
    # 0.05 is not more than the tolerance 0.05: only gmi is short of converged.
    assert "not converged for gmi:" in text
    assert "gmi 0.110 [0.010, 0.210], plgmi -0.050 [-0.140, 0.040], mi_face 0.050 [-0.060, 0.160]" in text
    assert "1 training seed, 100 reconstructions per attack and seed; 2026-12-02" in text
    assert "`python recipes/convergence.py --preset=quick`" in text
    # The records were measured on the unprotected target alone with the old bootstrap.
    assert "against the unprotected digits target only" in text
    assert "the recipe's earlier two-level bootstrap" in text


def test_paragraph_says_converged_when_no_attack_gained_more_than_the_tolerance():
    # Judged on the mean gain (the rule the records were measured with), although the
    # interval's upper end 0.09 is above the tolerance.
    text = gap_paragraph(_gap(gmi=(0.02, -0.05, 0.09)), tolerance=0.05)
    assert ("budgets are converged by their mean gains: doubling them raised no unprotected "
            "mean top-1 by more than 0.05") in text


@pytest.mark.parametrize("preset", sorted(MEASURED_GAPS))
def test_every_record_covers_the_default_attacks_with_consistent_intervals(preset):
    gap = MEASURED_GAPS[preset]
    assert gap.preset == preset and f"--preset={preset}" in gap.command
    default_attacks = [name for name in suite.ATTACKS if name not in suite.OPTION_ATTACKS]
    assert sorted(gap.gains) == sorted(default_attacks)
    for gain in gap.gains.values():
        assert gain["low"] <= gain["mean"] <= gain["high"]
