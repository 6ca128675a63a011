"""Training: the sharded, donated train step and the resumable train loop (optax lives here only)."""
