"""The defenses a target can be trained with, by name, and what each one involves."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Defense:
    """What training a target with one defense involves.

    Attributes:
        name: The name `trapmid-train --defense` and `trapmid-pipeline --defenses` take.
        trapdoor: Whether it trains Trap-MID triggers (a `TrapMIDModel`: trapdoor labels,
            trigger files, trapdoor accuracy).
        negls: Whether its classification loss is NegLS (negative label smoothing).
        regularizer: "mid" or "bido" for the baselines that wrap the classifier in a
            regularised model (`MIDModel`, `BiDOModel`), else None.
    """

    name: str
    trapdoor: bool = False
    negls: bool = False
    regularizer: str | None = None


DEFENSES = {
    defense.name: defense
    for defense in (
        Defense("none"),
        Defense("trapmid", trapdoor=True),
        Defense("negls", negls=True),
        Defense("trapmid_negls", trapdoor=True, negls=True),
        Defense("mid", regularizer="mid"),
        Defense("bido", regularizer="bido"),
    )
}


def get_defense(name):
    """The `Defense` called `name`.

    Args:
        name: A key of `DEFENSES`.

    Returns:
        Its `Defense`.

    Raises:
        ValueError: For an unknown name, listing the known ones.
    """
    if name not in DEFENSES:
        raise ValueError(f"`defense` must be one of {list(DEFENSES)}; received {name!r}.")
    return DEFENSES[name]
