"""trapmid_tf.layers."""
