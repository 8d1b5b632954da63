"""trapmid_tf: Trap-MID model-inversion defense, MI attacks and evaluation for Keras 3."""
