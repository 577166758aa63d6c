"""Training: the trainer and its loop, the step, the optimizer, evaluation, checkpoints
and the run's metric log."""
