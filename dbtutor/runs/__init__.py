"""A training run's life: what makes two runs the same, checkpoints, resume, samples along the way, trackers."""
