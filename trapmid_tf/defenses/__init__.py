"""trapmid_tf.defenses."""
