"""Training: config building blocks, stages, the sharded train step and loop, checkpoints."""
