"""The attack suite's option attacks: what each needs, and what it refuses."""

import numpy as np
import pytest

from tests.attacks.test_inversion import tiny_classifier, tiny_conditional_generator, tiny_generator
from trapmid_tf.attacks import suite
from trapmid_tf.attacks.brep_mi import BREPMIAttack
from trapmid_tf.attacks.plgmi_adaptive import PLGMIAdaptiveAttack
from trapmid_tf.attacks.trigger_recovery import TriggerRecoveryAttack


@pytest.fixture(scope="module")
def priors():
    return {
        "plgmi": suite.PriorNetworks(tiny_conditional_generator(), None),
        "gmi": suite.PriorNetworks(tiny_generator(), tiny_classifier(num_classes=1)),
    }


def test_option_attacks_are_registered_with_their_priors():
    assert set(suite.OPTION_ATTACKS) <= set(suite.ATTACKS)
    assert suite.priors_needed(["plgmi_adaptive", "plgmi_adaptive_estimated"]) == ["plgmi"]
    assert suite.priors_needed(["brep_mi"]) == ["gmi"]
    assert suite.priors_needed(["trigger_recovery"]) == []


def test_build_passes_the_options_to_the_attacks(priors):
    signatures = np.ones((3, 6))
    settings = suite.InversionSettings(plgmi_iterations=7)
    known = suite.build_attack(
        "plgmi_adaptive", priors, settings, signatures=signatures, penalty_weight=3.0
    )
    assert isinstance(known, PLGMIAdaptiveAttack)
    assert known.iterations == 7 and known.penalty_weight == 3.0
    np.testing.assert_array_equal(known.signatures, signatures)
    public = np.zeros((2, 4, 4, 1), np.float32)
    estimated = suite.build_attack(
        "plgmi_adaptive_estimated", priors, settings, public_images=public, top_n=2
    )
    assert estimated.signatures is None and estimated.iterations == 7
    assert estimated.top_n == 2 and estimated.public_images.shape == public.shape
    recovery = suite.build_attack("trigger_recovery", {}, public_images=public, alpha=0.1)
    assert isinstance(recovery, TriggerRecoveryAttack) and recovery.alpha == 0.1
    brep = suite.build_attack("brep_mi", priors, patience=5)
    assert isinstance(brep, BREPMIAttack) and brep.patience == 5
    assert brep.generator is priors["gmi"].generator


def test_build_says_what_is_missing_or_refused(priors):
    with pytest.raises(ValueError, match="'plgmi_adaptive' needs the option `signatures`"):
        suite.build_attack("plgmi_adaptive", priors)
    with pytest.raises(ValueError, match="estimates the signatures itself"):
        suite.build_attack("plgmi_adaptive_estimated", priors, signatures=np.ones((3, 6)))
    with pytest.raises(ValueError, match="'plgmi_adaptive_estimated' needs the option "
                                         "`public_images`"):
        suite.build_attack("plgmi_adaptive_estimated", priors)
    with pytest.raises(ValueError, match="needs the option `public_images`"):
        suite.build_attack("trigger_recovery", {})
    with pytest.raises(ValueError, match=r"'gmi' takes no options; received \['alpha'\]"):
        suite.build_attack("gmi", priors, alpha=0.1)
    with pytest.raises(ValueError, match=r"'brep_mi' needs the priors \['gmi'\]"):
        suite.build_attack("brep_mi", {})
