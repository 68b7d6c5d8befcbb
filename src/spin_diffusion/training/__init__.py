"""The training engine: one loop for every method, the losses it runs, batches, reference errors, checkpoints, EMA, optimizers."""
