"""trapmid_tf.data."""
