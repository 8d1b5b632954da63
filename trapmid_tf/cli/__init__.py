"""The console commands (`trapmid-train`, `trapmid-prior`, `trapmid-attack`, `trapmid-evaluate`,
`trapmid-pipeline`, `trapmid-audit`): each module parses its flags and runs one stage, the
whole pipeline, or the audit of a saved model.

Python runs this file before any command module, so TensorFlow is imported here, quietly and
with oneDNN on x86-64 (`trapmid_tf.startup`), before anything else imports it.
"""

from trapmid_tf.startup import import_tensorflow

import_tensorflow()
