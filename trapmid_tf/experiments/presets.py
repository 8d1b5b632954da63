"""What a pipeline run works on and its budgets: `PipelineRun`, the presets, the checked settings.

`pipeline_settings` turns a preset (`PRESETS`), overrides and the chosen attacks into the
checked `PipelineSettings` that every stage of `trapmid_tf.experiments.pipeline` reads;
`measured_gap` says whether a run carries its preset's measured distance from convergence.
"""

import dataclasses

from trapmid_tf.attacks import suite
from trapmid_tf.experiments.measured_convergence import MEASURED_GAPS
from trapmid_tf.experiments.target_config import DEFENSES

# The full preset's budgets: these keys of `trapmid_tf.attacks.REFERENCE_BUDGETS`.
REFERENCE_KEYS = dict(
    gmi_steps="gmi_generator_steps", kedmi_steps="kedmi_generator_steps",
    plgmi_steps="plgmi_generator_steps", surrogate_steps="surrogate_steps",
    kedmi_n_critic="n_critic", kedmi_batch_size="batch_size", top_n="top_n",
    iterations="iterations", plgmi_iterations="plgmi_iterations",
)
# The option attacks' budgets in the full preset, for lack of reference values: the paper runs
# no trigger recovery (TriggerRecoveryAttack's default), and BREP-MI's authors walk until 1000
# accepted steps pass without growth, with no cap (BREPMIAttack's default cap).
FULL_RECOVERY_ITERATIONS = 500
FULL_BREP_ITERATIONS = 10_000
# `brep_initial_batches`: BREP-MI's bound on the batches of 256 latents searched for starting
# points; None is `BREPMIAttack`'s default (`brep_mi.MAX_INITIAL_BATCHES`, 10,000), 4 keeps the
# tiny preset's untrained prior from spending it (its classes without a start are listed apart).
PRESETS = {
    "tiny": dict(
        defenses=["none", "trapmid"], seeds=[0], target_epochs=2, evaluation_epochs=1,
        gmi_steps=2, kedmi_steps=4, kedmi_n_critic=1, kedmi_batch_size=32, plgmi_steps=2,
        surrogate_steps=4, base_channels=8, top_n=4, per_class=2, iterations=4,
        plgmi_iterations=4, mi_face_iterations=4, recovery_iterations=4, brep_iterations=4,
        brep_initial_batches=4, require_trapdoor=False,
    ),
    # The session-2 demo budgets, as steps on the digits public split (21 batches of 64).
    "quick": dict(
        defenses=["none", "trapmid", "negls", "trapmid_negls"], seeds=[0], target_epochs=None,
        evaluation_epochs=10, gmi_steps=126, kedmi_steps=336, kedmi_n_critic=1,
        kedmi_batch_size=32, plgmi_steps=24, surrogate_steps=63, base_channels=16, top_n=30,
        per_class=5, iterations=100, plgmi_iterations=100, mi_face_iterations=300,
        recovery_iterations=300, brep_iterations=1000, brep_initial_batches=None,
        require_trapdoor=True,
    ),
    # The protection claims: the quick preset's prior budgets x4 (the PLG-MI prior's x16: at
    # x4 its reconstructions were still mode-collapsed blobs) and inversion budgets x2; 5 seeds
    # (the paired t-interval on 4 degrees of freedom), 20 reconstructions per class.
    # recipes/convergence.py checks it (README).
    "strong": dict(
        defenses=["none", "trapmid", "trapmid_negls"], seeds=[0, 1, 2, 3, 4], target_epochs=None,
        evaluation_epochs=10, gmi_steps=504, kedmi_steps=1344, kedmi_n_critic=1,
        kedmi_batch_size=32, plgmi_steps=400, surrogate_steps=252, base_channels=16, top_n=30,
        per_class=20, iterations=200, plgmi_iterations=200, mi_face_iterations=600,
        recovery_iterations=600, brep_iterations=2000, brep_initial_batches=None,
        require_trapdoor=True,
    ),
    "full": dict(
        dict.fromkeys(REFERENCE_KEYS), seeds=[0, 1, 2], target_epochs=None,
        defenses=["none", "trapmid", "negls", "trapmid_negls", "mid", "bido"],
        evaluation_epochs=20, base_channels=64, per_class=20, mi_face_iterations=1000,
        recovery_iterations=FULL_RECOVERY_ITERATIONS, brep_iterations=FULL_BREP_ITERATIONS,
        brep_initial_batches=None, require_trapdoor=True,
    ),
}
PRESET_KEYS = tuple(PRESETS["quick"])
STEP_KEYS = ("gmi_steps", "kedmi_steps", "plgmi_steps", "surrogate_steps", "iterations",
             "plgmi_iterations", "mi_face_iterations", "recovery_iterations", "brep_iterations")
# Pipeline-only defense names: a train_target defense with other settings.
VARIANTS = {
    # The paper's blend ratio and the reference's best-epoch rule (clean accuracy only).
    "trapmid_paper": ("trapmid", dict(alpha=0.02, min_trapdoor_accuracy=0.0)),
    # Random fixed triggers: never optimised through the classifier, so they carry nothing of
    # their class (no trigger leakage); they need a larger blend weight to form the trapdoor
    # (on digits 0.1 does not in 40 epochs, 0.2 does; docs/adaptive_attacks.md).
    "trapmid_random": ("trapmid", dict(optimize_triggers=False, alpha=0.2)),
}


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """What a pipeline runs on and where it writes, besides its budgets (`pipeline_settings`).

    Attributes:
        out: Folder of the run (every stage's artefacts, results.json, report.md).
        dataset: Dataset name (`trapmid_tf.data.load`).
        data_dir: Its folder (None for the embedded digits).
        seed: Seed of the private/public split, the evaluation model and the held-out
            judge's split and training (each training seed's GMI prior is trained with that
            training seed, on this split's public data).
        preset: The preset the settings started from (for the measured convergence gap).
        public_split: Digit datasets' public split, or None for the dataset's default.
        target_settings: trapmid-train settings shared by every target (`resolve_config`
            keys; each target sets its own defense, seed and folder).
        overwrite: Redo every stage even if stored.
        fid_weights: Local InceptionV3 weights for FID, or None.
        evaluation_model: A saved evaluation classifier, or None to train one.
        verbose: Show per-epoch logs and inversion progress bars.
    """

    out: str
    dataset: str = "digits"
    data_dir: str | None = None
    seed: int = 0
    preset: str = "quick"
    public_split: str | None = None
    target_settings: dict = dataclasses.field(default_factory=dict)
    overwrite: bool = False
    fid_weights: str | None = None
    evaluation_model: str | None = None
    verbose: bool = False

    @property
    def fit_verbosity(self):
        """`keras.Model.fit`'s verbosity: one line per epoch when verbose, else silent."""
        return 2 if self.verbose else 0

    @property
    def progress_verbosity(self):
        """The inversion loops' verbosity: a progress bar when verbose, else silent."""
        return 1 if self.verbose else 0


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """The checked budgets and choices of a pipeline run (`pipeline_settings`).

    Attributes:
        defenses: Defense names (train_target's and `VARIANTS`).
        seeds: Distinct training seeds.
        target_epochs: Target epochs, or None for train_target's.
        evaluation_epochs: Evaluation-model epochs.
        gmi_steps, kedmi_steps, plgmi_steps: Generator steps of the GAN priors.
        kedmi_n_critic, kedmi_batch_size: KED-MI's critic steps per generator step, its batch.
        surrogate_steps: LOMMA's distillation steps per surrogate.
        base_channels: Width of the GAN priors.
        top_n: PLG-MI's public images pseudo-labelled per class.
        per_class: Reconstructions per attacked class.
        iterations, plgmi_iterations, mi_face_iterations: Inversion steps of GMI, KED-MI and
            LOMMA, of PLG-MI (PLG-MI++ too), of MI-Face.
        recovery_iterations: Trigger recovery's steps.
        brep_iterations: BREP-MI's cap on its iterations.
        brep_initial_batches: BREP-MI's bound on the batches searched for starting points,
            or None for its default.
        require_trapdoor: Whether a Trap-MID target without a trapdoor fails the run.
        attacks: Attack names, the lookup baseline and the transfer null first.
        adaptive_weight: PLG-MI++'s penalty weight.
        recovery_alpha: Trigger recovery's blend weight, or None for the target's.
        budget_scale: The factor the step budgets (`STEP_KEYS`) were multiplied by.
        public_split: What the stages record of the public data (`run_pipeline` sets the
            dataset's split, the audit its folder), or None before.
    """

    defenses: tuple
    seeds: tuple
    target_epochs: int | None
    evaluation_epochs: int
    gmi_steps: int
    kedmi_steps: int
    kedmi_n_critic: int
    kedmi_batch_size: int
    plgmi_steps: int
    surrogate_steps: int
    base_channels: int
    top_n: int
    per_class: int
    iterations: int
    plgmi_iterations: int
    mi_face_iterations: int
    recovery_iterations: int
    brep_iterations: int
    brep_initial_batches: int | None
    require_trapdoor: bool
    attacks: tuple
    adaptive_weight: float
    recovery_alpha: float | None
    budget_scale: int
    public_split: str | None = None

    def as_dict(self):
        """The settings as flags.json and results.json record them (lists for the tuples)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


def preset_settings(name):
    """The preset `name`, the full preset's budgets read from the reference's."""
    settings = dict(PRESETS[name])
    for key, reference_key in REFERENCE_KEYS.items():
        if settings[key] is None:
            settings[key] = suite.REFERENCE_BUDGETS[reference_key]
    return settings


def pipeline_settings(preset="quick", overrides=None, attacks=None, budget_scale=1,
                      adaptive_weight=1.0, recovery_alpha=None):
    """The preset with `overrides` applied, checked, with the budget scale applied.

    Args:
        preset: A key of `PRESETS`.
        overrides: `{key: value}` replacing the preset's (keys of `PRESET_KEYS`).
        attacks: Attack names, or None for every attack but the option attacks; the lookup
            baseline (`suite.LOOKUP`, the floor of the report's verdicts) and the transfer
            null (`suite.TRANSFER_NULL`, the report's test of its judges) are always run,
            first.
        budget_scale: Factor (>= 1) applied to every step budget (`STEP_KEYS`).
        adaptive_weight: Penalty weight of the adaptive PLG-MI attacks (finite, >= 0).
        recovery_alpha: Blend weight of trigger recovery in (0, 1), or None for the target's.

    Returns:
        The run's `PipelineSettings` (`public_split` not yet set).

    Raises:
        ValueError: for an unknown preset, defense or attack, or a bad number; the message
            names the argument or setting (`preset`, `overrides` or a `PipelineSettings`
            attribute).
    """
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}; received {preset!r}.")
    settings = preset_settings(preset)
    unknown = sorted(set(overrides or {}) - set(PRESET_KEYS))
    if unknown:
        raise ValueError(f"`overrides` must have keys among {list(PRESET_KEYS)}; got {unknown}.")
    settings.update(overrides or {})
    chosen = list(attacks or [
        name for name in suite.ATTACKS if name not in suite.OPTION_ATTACKS
    ])
    always = [suite.LOOKUP, suite.TRANSFER_NULL]
    settings["attacks"] = always + [name for name in chosen if name not in always]
    defenses = (*DEFENSES, *VARIANTS)
    for key, allowed in (("defenses", defenses), ("attacks", suite.ATTACKS)):
        unknown = [name for name in settings[key] if name not in allowed]
        if unknown or not settings[key]:
            raise ValueError(
                f"`{key}` must list names among {list(allowed)}; received {settings[key]}."
            )
    seeds = settings["seeds"]
    if not seeds or any(type(seed) is not int or seed < 0 for seed in seeds) or len(
        set(seeds)
    ) < len(seeds):
        raise ValueError(f"`seeds` must list distinct integers >= 0; received {seeds}.")
    if budget_scale < 1:
        raise ValueError(f"`budget_scale` must be >= 1; received {budget_scale}.")
    if not adaptive_weight >= 0 or adaptive_weight == float("inf"):
        raise ValueError(
            f"`adaptive_weight` must be a finite number >= 0; received {adaptive_weight}."
        )
    if recovery_alpha is not None and not 0 < recovery_alpha < 1:
        raise ValueError(f"`recovery_alpha` must lie in (0, 1); received {recovery_alpha}.")
    settings.update(adaptive_weight=adaptive_weight, recovery_alpha=recovery_alpha)
    for key in PRESET_KEYS:
        value = settings[key]
        if type(value) is int and value < (0 if "iterations" in key else 1):
            raise ValueError(f"`{key}` must be positive; received {value}.")
    settings["budget_scale"] = budget_scale
    for key in STEP_KEYS:
        settings[key] *= budget_scale
    for key in ("defenses", "seeds", "attacks"):
        settings[key] = tuple(settings[key])
    return PipelineSettings(**settings)


def measured_gap(settings, preset, dataset):
    """The preset's measured distance from convergence (`MEASURED_GAPS`) as a dict, or None.

    Only a run at the preset's own step budgets on the embedded digits has one: the
    measurement says nothing about other budgets or data.

    Args:
        settings: The run's `PipelineSettings`.
        preset: The preset they started from.
        dataset: The dataset name.
    """
    gap = MEASURED_GAPS.get(preset)
    budgets_changed = settings.budget_scale != 1 or any(
        getattr(settings, key) != preset_settings(preset)[key] for key in STEP_KEYS
    )
    if gap is None or budgets_changed or dataset != "digits":
        return None
    return gap.as_dict()
