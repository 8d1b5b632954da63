"""What a pipeline's results say: chance, the floors of leakage, the judges, the verdicts.

Pure functions of the results dict (as in results.json); how a report lays them out is
`trapmid_tf.report.markdown`'s part. Here: whether an attack shows leakage (`works`: above
uniform chance and above the lookup floor, per judge), the verdict on each defense against
the undefended model (`verdicts`), and our ratios beside the paper's (`paper_comparison`).
The rows they return hold their cells as text (`trapmid_tf.report.tables.estimate_text`).
"""

from trapmid_tf.attacks.suite import LOOKUP, TRANSFER_NULL
from trapmid_tf.metrics.evaluator import NOT_APPLICABLE, PER_IMAGE_METRICS
from trapmid_tf.metrics.intervals import NEEDS_SEEDS, compare, decide
from trapmid_tf.report.tables import estimate_text

# An attack "works" (shows leakage) against a model when its top-1 interval lies above both
# floors: uniform chance over the attacked classes and the lookup baseline's top-1 (`works`).
WORKS_ON_BASELINE = "attack fails on the baseline"
# How a top-1 at or below the floors is marked in the tables.
AT_FLOOR = " *≤ floor*"
# The judges of reconstructions: the evaluation model's top-1, for small images the pixel
# judge's (`trapmid_tf.metrics.pixel_judge`) and, for the digit datasets, the held-out
# judge's (a classifier of another architecture trained on images no target trains on,
# `trapmid_tf.metrics.classifier_judge`), by their summary keys, with their names.
JUDGES = {"aa1": "evaluation model", "pixel_aa1": "pixel judge",
          "held_out_aa1": "held-out judge"}
# A verdict needs the judges to agree (`verdicts`); where they do not, the verdict reads so.
JUDGES_DISAGREE = "judges disagree"
# The paper's top-1 attack accuracy in percent (VGG-16 on CelebA, read off the official
# repository's charts; ../shared/docs/paper_results.md), by defense and attack.
PAPER_TOP1 = {
    "none": dict(gmi=14, kedmi=56.5, lomma_gmi=68, lomma_kedmi=79.5, plgmi=95.5),
    "mid": dict(gmi=10, kedmi=53, lomma_gmi=53, lomma_kedmi=68, plgmi=93),
    "bido": dict(gmi=5, kedmi=35, lomma_gmi=54, lomma_kedmi=63.5, plgmi=89),
    "negls": dict(gmi=8, kedmi=32.5, lomma_gmi=49, lomma_kedmi=77.5, plgmi=89.5),
    "trapmid": dict(gmi=0.5, kedmi=9.5, lomma_gmi=41.5, lomma_kedmi=61, plgmi=6.5),
    "trapmid_negls": dict(gmi=1.5, kedmi=4.5, lomma_gmi=23, lomma_kedmi=42.5, plgmi=0.5),
}
# How a Trap-MID target whose trapdoor did not form is shown (train_target's results.json
# records `trapdoor_formed`): its numbers are not a defense's.
NOT_FORMED = "trapdoor not formed: no protection expected"
# Attacks that do not apply to the undefended model (PLG-MI++ with the defender's signatures
# needs triggers) are compared with the undefended model under the attack they extend.
BASELINE_ATTACKS = {"plgmi_adaptive": "plgmi"}


def trapdoor_not_formed(scores):
    """Whether a defense's scores say its trapdoor did not form (in any of its seeds).

    Args:
        scores: One defense's entry of the pipeline's results (`trapdoor_formed` optional).

    Returns:
        True only when `trapdoor_formed` is recorded as False.
    """
    return scores.get("trapdoor_formed") is False


def not_applicable(scores):
    """Why an attack did not run against a model, as a table cell; None if it ran.

    Args:
        scores: One attack's summary against one model.

    Returns:
        `"not applicable: <reason>"` or None.
    """
    if NOT_APPLICABLE not in scores:
        return None
    return f"not applicable: {scores[NOT_APPLICABLE]}"


def top1_text(scores, judge="aa1"):
    """An attack's top-1 for a table: the estimate's text, or why the attack did not run.

    Args:
        scores: One attack's summary against one model.
        judge: The top-1 of which judge, a key of `JUDGES`.

    Returns:
        A string.
    """
    return not_applicable(scores) or estimate_text(scores[judge])


def attack_names(results):
    """The attacks scored in a pipeline results dict, in run order.

    Args:
        results: The pipeline's results dict (as in results.json).

    Returns:
        A list of attack names.
    """
    return list(next(iter(results["defenses"].values()))["attacks"])


def uniform_chance(results):
    """Top-1 accuracy of guessing uniformly among the attacked classes.

    Every attack is scored on the same attacked classes, so this is every attack's chance,
    whatever the number of classes the evaluation model knows.

    Args:
        results: The pipeline's results dict (`attacked_classes`).

    Returns:
        1 / the number of attacked classes.
    """
    return 1.0 / results["attacked_classes"]


def works(scores, chance, lookup, judge="aa1"):
    """Whether an attack shows leakage: its top-1 is above chance and above the lookup floor.

    "Above" is read conservatively, interval against interval: the lower end of the attack's
    top-1 interval must exceed both uniform chance and the upper end of the lookup baseline's
    top-1 interval on the same target, both by the same judge. The top-1 of the attack's
    un-optimised starting samples (`chance_aa1`) is no gate, only a diagnostic column. The
    lookup never passes against itself.

    Args:
        scores: One attack's summary against one model (`judge` as `Estimate.as_dict()`).
        chance: Uniform chance among the attacked classes, see `uniform_chance`.
        lookup: The lookup baseline's summary against the same model (`judge` likewise).
        judge: The top-1 of which judge, a key of `JUDGES`.

    Returns:
        True when `scores[judge]["low"] > max(chance, lookup[judge]["high"])`.
    """
    return scores[judge]["low"] > max(chance, lookup[judge]["high"])


def floor_mark(scores, chance, lookup, judge="aa1"):
    """`AT_FLOOR` for a top-1 at or below the floors of `works`, else an empty string.

    Args:
        scores: One attack's summary against one model.
        chance: Uniform chance among the attacked classes.
        lookup: The lookup baseline's summary against the same model.
        judge: The top-1 of which judge, a key of `JUDGES`.

    Returns:
        `AT_FLOOR`, or "" for an attack above the floors, one that did not run, or the
        lookup itself (the floor).
    """
    if scores is lookup or not_applicable(scores) or works(scores, chance, lookup, judge):
        return ""
    return AT_FLOOR


def judges(results):
    """The judges that scored a pipeline's results: `aa1`, and `pixel_aa1` and
    `held_out_aa1` where they ran.

    Args:
        results: The pipeline's results dict.

    Returns:
        A list of keys of `JUDGES`.
    """
    scored = [summary for scores in results["defenses"].values()
              for summary in scores["attacks"].values()]
    return [judge for judge in JUDGES
            if any(summary.get(judge) is not None for summary in scored)]


def judged_leakage(results):
    """Per judge, the `(attack, defense)` pairs where the attack shows leakage (`works`).

    Args:
        results: The pipeline's results dict.

    Returns:
        `{judge: set of (attack, defense)}` over the attacks that ran, the lookup left out.
    """
    chance = uniform_chance(results)
    return {
        judge: {(attack, defense)
                for defense, scores in results["defenses"].items()
                for attack, summary in scores["attacks"].items()
                if attack != LOOKUP and not not_applicable(summary)
                and works(summary, chance, scores["attacks"][LOOKUP], judge)}
        for judge in judges(results)
    }


def verdicts(results, baseline="none"):
    """Compares each defense's top-1 attack accuracy with the undefended model's.

    The verdict words come from `trapmid_tf.metrics.intervals.compare` on the per-seed,
    per-reconstruction top-1 outcomes (defense and baseline paired by training seed) and
    `intervals.decide`, Holm-corrected over every comparison that gets a verdict word here
    (those not gated by `NOT_FORMED`, `JUDGES_DISAGREE` or `WORKS_ON_BASELINE`): a word is
    given only where the corrected test supports it, and with one seed there is none
    (`intervals.NEEDS_SEEDS`). With several judges (`judges`) each judge is tested so, Holm
    over its own comparisons, and a verdict needs them all to agree: a row reads `JUDGES_DISAGREE`
    where they disagree on whether the attack shows leakage on the baseline (`works`), and
    `JUDGES_DISAGREE` with each judge's word where their words differ. The lookup and the
    transfer null are references, not attacks to defend against: they get no row.

    Args:
        results: The pipeline's results dict.
        baseline: The undefended defense's name.

    An attack that does not apply to the baseline is compared with the baseline under the
    attack it extends (`BASELINE_ATTACKS`; the row's attack reads "attack vs base"); rows of
    an attack that did not apply have no numbers and say why.

    Returns:
        A list of `(attack, defense, baseline aa1, defended aa1, ratio, verdict)`, the
        accuracies and the ratio defended / baseline as "mean [low, high]" text (the ratio
        None with one seed; both by the evaluation model), verdict one of
        `WORKS_ON_BASELINE`, `NOT_FORMED`, `JUDGES_DISAGREE` (alone, or with each judge's
        word), `intervals.VERDICT_WORDS`, `intervals.NEEDS_SEEDS` or a "not applicable" text.
    """
    defenses = results["defenses"]
    if baseline not in defenses:
        return []
    judged = judges(results)
    rows, tested = [], []
    for attack in attack_names(results):
        if attack in (LOOKUP, TRANSFER_NULL):  # references, not attacks to defend against
            continue
        label, reference = attack, defenses[baseline]["attacks"][attack]
        base = BASELINE_ATTACKS.get(attack)
        if not_applicable(reference) and base in defenses[baseline]["attacks"]:
            label, reference = f"{attack} vs {base}", defenses[baseline]["attacks"][base]
        for defense, scores in defenses.items():
            if defense == baseline:
                continue
            defended = scores["attacks"][attack]
            skipped = not_applicable(defended) or not_applicable(reference)
            if skipped:
                rows.append((label, defense, top1_text(reference), top1_text(defended), None,
                             skipped))
                continue
            found = {judge: compare(defended["groups"][_group(judge)],
                                    reference["groups"][_group(judge)],
                                    scores["seeds"], defenses[baseline]["seeds"])
                     for judge in judged}
            leaks = {works(reference, uniform_chance(results),
                           defenses[baseline]["attacks"][LOOKUP], judge) for judge in judged}
            if trapdoor_not_formed(scores):
                word = NOT_FORMED
            elif len(leaks) > 1:
                word = JUDGES_DISAGREE
            elif not leaks.pop():
                word = WORKS_ON_BASELINE
            else:
                word, tested = None, tested + [(len(rows), found)]
            ratio = found["aa1"].ratio
            rows.append((
                label, defense, estimate_text(reference["aa1"]), estimate_text(defended["aa1"]),
                None if ratio is None else estimate_text(ratio.as_dict()), word,
            ))
    words = {judge: [decided.word for decided in decide([found[judge] for _, found in tested])]
             for judge in judged}
    for position, (index, _) in enumerate(tested):
        rows[index] = rows[index][:-1] + (_agreed({j: words[j][position] for j in judged}),)
    return rows


def _group(judge):
    """The per-reconstruction outcome behind a judge's top-1 (`PER_IMAGE_METRICS`)."""
    return {name: key for key, name in PER_IMAGE_METRICS.items()}[judge]


def _agreed(words):
    """The verdict of `{judge: word}`: the word all judges give, else `JUDGES_DISAGREE`."""
    if len(set(words.values())) == 1:
        return next(iter(words.values()))
    return f"{JUDGES_DISAGREE} (" + ", ".join(
        f"{JUDGES[judge]}: {word}" for judge, word in words.items()) + ")"


def paper_comparison(results, baseline="none"):
    """Our defended / undefended top-1 ratio beside the paper's, per defense and attack.

    Args:
        results: The pipeline's results dict.
        baseline: The undefended defense's name.

    Returns:
        Rows `(attack, defense, our ratio "mean [low, high]", paper ratio, agreement)` for
        the defenses and attacks the paper reports; our ratio is `intervals.compare`'s
        (paired by training seed); agreement says whether the paper's ratio lies inside our
        interval, below it or above it. With one seed there is no interval: our ratio is
        None and agreement `intervals.NEEDS_SEEDS`.
    """
    defenses = results["defenses"]
    if baseline not in defenses:
        return []
    rows = []
    for attack in attack_names(results):
        if attack not in PAPER_TOP1[baseline]:
            continue
        reference = defenses[baseline]["attacks"][attack]["groups"]["top1"]
        for defense, scores in defenses.items():
            if defense == baseline or defense not in PAPER_TOP1:
                continue
            ours = compare(scores["attacks"][attack]["groups"]["top1"], reference,
                           scores["seeds"], defenses[baseline]["seeds"]).ratio
            paper = PAPER_TOP1[defense][attack] / PAPER_TOP1[baseline][attack]
            if ours is None:
                rows.append((attack, defense, None, round(paper, 3), NEEDS_SEEDS))
                continue
            if ours.low <= paper <= ours.high:
                agreement = "inside our interval"
            else:
                agreement = "ours higher" if ours.low > paper else "ours lower"
            rows.append((attack, defense, estimate_text(ours.as_dict()), round(paper, 3),
                         agreement))
    return rows
