"""PoseRegressor: ResNet-50 regressing 3D joints (Section 3.3), and its losses.

The ResNet's classifier is replaced by one linear layer to `num_joints x 3`
raw values (root-relative millimetres, or whatever normalisation the trainer
applies to its targets). Inputs are the six-channel foreground/background
skeleton maps resized to 224 (`in_channels=6`), or RGB for the Direct-RGB
baseline (`in_channels=3`).
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from deepskeleton_jax.models import resnet


class PoseRegressor(nn.Module):
  """ResNet + linear layer to [B, num_joints, 3].

  Attributes:
    stage_sizes: ResNet stage sizes ((3, 4, 6, 3) = ResNet-50).
    width: ResNet stem width (64 = ResNet-50).
    in_channels: input channels (6 skeleton maps, 3 for Direct RGB).
    num_joints: joints regressed.
    dtype: backbone computation dtype; the output layer runs in float32.
    remat: rematerialise the backbone's blocks.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  in_channels: int = 6
  num_joints: int = 16
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Regresses 3D joints.

    Args:
      x: [B, S, S', in_channels] inputs, sides multiples of 32.
      train: batch statistics mode for every BatchNorm.

    Returns:
      [B, num_joints, 3] float32.
    """
    pooled = resnet.ResNet(self.stage_sizes, self.width, self.in_channels,
                           self.dtype, self.remat, name='backbone')(
                               x, train)['pooled']
    # Small initial outputs: the first steps do not push the backbone around.
    out = nn.Dense(self.num_joints * 3, dtype=jnp.float32,
                   param_dtype=jnp.float32,
                   kernel_init=nn.initializers.normal(1e-3), name='fc')(pooled)
    out = out.reshape(x.shape[0], self.num_joints, 3)
    chex.assert_type(out, jnp.float32)
    return out


def pose_loss(pred: jax.Array, target: jax.Array,
              weights: jax.Array | None = None) -> jax.Array:
  """Mean Euclidean distance between predicted and target joints.

  Args:
    pred: [B, K, 3] predictions.
    target: [B, K, 3] targets, same units.
    weights: optional non-negative weights of shape [B, K] (e.g. joint
      validity) or [B] (e.g. `has_3d`); the loss is the weighted mean distance
      (0 when all weights are 0).

  Returns:
    Scalar float32 loss.
  """
  chex.assert_equal_shape([pred, target])
  chex.assert_rank(pred, 3)
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  sq = jnp.sum(jnp.square(diff), axis=-1)
  # The clamp keeps the gradient finite (zero) where pred == target exactly.
  dist = jnp.sqrt(jnp.maximum(sq, 1e-12))
  if weights is None:
    return jnp.mean(dist)
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape == dist.shape[:1]:
    weights = weights[:, None]
  elif weights.shape != dist.shape:
    raise ValueError(f'weights must have shape {dist.shape} or '
                     f'{dist.shape[:1]}, got {weights.shape}')
  weights = jnp.broadcast_to(weights, dist.shape)
  return jnp.sum(weights * dist) / jnp.maximum(jnp.sum(weights), 1e-12)


def euclidean_loss(pred: jax.Array, target: jax.Array,
                   weights: jax.Array | None = None) -> jax.Array:
  """Caffe's EuclideanLoss (the paper's): the sum of squared differences / 2N.

  Args:
    pred: [B, K, 3] predictions.
    target: [B, K, 3] targets, same units.
    weights: optional non-negative example weights [B] (e.g. `has_3d`), or
      per-joint weights [B, K]; N is then the sum of the example weights
      (per joint: their mean over joints), B when all are 1 as in Caffe.

  Returns:
    Scalar float32: sum_b w_b sum_k ||pred - target||^2 / (2 N) (0 when all
    weights are 0).
  """
  chex.assert_equal_shape([pred, target])
  chex.assert_rank(pred, 3)
  sq = jnp.sum(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
  if weights is None:
    return jnp.sum(sq) / (2.0 * sq.shape[0])
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape == sq.shape[:1]:
    weights = weights[:, None]
  elif weights.shape != sq.shape:
    raise ValueError(f'weights must have shape {sq.shape} or {sq.shape[:1]}, got {weights.shape}')
  weights = jnp.broadcast_to(weights, sq.shape)
  examples = jnp.sum(weights) / sq.shape[1]
  return jnp.sum(weights * sq) / jnp.maximum(2.0 * examples, 1e-12)
