"""Pieces of the training script: checkpoints, the epoch loop, plots and tuning."""
