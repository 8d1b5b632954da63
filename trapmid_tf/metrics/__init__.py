"""trapmid_tf.metrics."""
