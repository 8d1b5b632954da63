"""trapmid_tf.models."""
