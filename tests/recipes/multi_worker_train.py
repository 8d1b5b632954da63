"""Runs `train_target.train` as one worker of a localhost cluster, or alone (test_multi_worker).

Usage: python -m tests.recipes.multi_worker_train OUT BACKUP_DIR [TASK_INDEX PORT PORT...]

With a task index it trains with --strategy=multi_worker in the cluster of the given ports;
without, with the default strategy. As in tests/defenses/test_trapmid_distributed.py the
classifier has no BatchNormalization (per-replica batch statistics legitimately differ from
whole-batch ones) and augmentation is off (TrapMIDModel draws the augmentation of its
concatenated clean + triggered batch per replica, which assigns the same parameters to other
images than one device does); everything else must agree. The optimiser is SGD: an update
linear in the gradient keeps the workers' float32 summation differences at that size, while
Adam (epsilon 1e-8) divides near-zero gradients by their own magnitude, so a rounding
difference in a gradient of about 1e-8 changes the step by a sizeable fraction of the learning
rate, which no float32 tolerance bounds.
"""

import functools
import json
import os
import sys


def main(out, backup_dir, task_index=None, *ports):
    if task_index is not None:
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
            "task": {"type": "worker", "index": int(task_index)},
        })
    from tests.recipes.test_train_target import config_for, load_recipe
    import trapmid_tf as tm

    recipe = load_recipe()
    tm.models.small_cnn = functools.partial(tm.models.small_cnn, batch_norm=False)
    config = config_for(
        recipe, "trapmid", out, epochs=1, width=4, batch_size=64, augment=False,
        optimizer="sgd", learning_rate=1e-2,
        backup_dir=backup_dir, strategy="default" if task_index is None else "multi_worker",
    )
    recipe.train(config)


if __name__ == "__main__":
    main(*sys.argv[1:])
