"""trapmid_tf.attacks."""
