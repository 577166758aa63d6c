"""Inference: a compiled predictor loaded from a checkpoint, and the mapping of the
released PyTorch weights onto the models."""
