"""What training and serving share: configs, stage definitions, checkpoints, the device mesh, the metrics log.

Nothing here imports optax or the trainer, so serving a trained model
(`deepskeleton_jax.inference`) loads only what it runs.
"""
