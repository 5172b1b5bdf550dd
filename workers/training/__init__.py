"""Learning from a dataset's training pairs: calibration of the degradation, and fine-tuning."""
