"""2D-to-3D lifting MLP (Martinez, Hossain, Romero, Little, ICCV 2017).

Lifts 2D joints to a root-relative 3D pose. It produces the MPII pseudo-3D
ground truth from 2D annotations (the paper's [59] step) and is a further
baseline. Inputs are per-pose normalised by `normalize_2d` (root-centred,
scaled by a robust pose size, invisible joints zeroed, visibility appended),
so the network sees no image position or scale. Outputs are root-relative 3D
joints in normalised units; the trainer multiplies them by a dataset scale.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepskeleton_jax.geometry import skeleton

Array = Any


def normalize_2d(joints_2d: Array, visible: Array, root: int = skeleton.ROOT,
                 eps: float = 1e-6) -> jax.Array:
  """Normalises 2D poses for `LiftingMLP`, invariant to translation and scale.

  Each pose is centred on its root joint (the thorax), or on the mean of its
  visible joints when the root is invisible, and divided by the median
  distance of its other visible joints from that centre (a robust size: one
  wild joint or a foreshortened limb does not dominate it). Invisible joints
  are set to 0 and a visibility channel is appended.

  Args:
    joints_2d: [..., K, 2] pixel coordinates (any frame, any scale).
    visible: [..., K] bool.
    root: index of the centring joint.
    eps: floor on the scale (a pose whose visible joints coincide).

  Returns:
    float32 [..., K, 3]: (x, y) normalised, then visibility in {0, 1}.
  """
  chex.assert_shape(joints_2d, (..., None, 2))
  if np.shape(visible) != np.shape(joints_2d)[:-1]:
    raise ValueError(f'visible must have shape {np.shape(joints_2d)[:-1]}, '
                     f'got {np.shape(visible)}')
  joints = jnp.asarray(joints_2d, jnp.float32)
  vis = jnp.asarray(visible, bool)
  w = vis.astype(jnp.float32)[..., None]
  count = jnp.sum(vis, axis=-1)
  mean = jnp.sum(joints * w, axis=-2) / jnp.maximum(count, 1)[..., None]
  centre = jnp.where(vis[..., root, None], joints[..., root, :], mean)
  rel = joints - centre[..., None, :]
  others = vis & (jnp.arange(vis.shape[-1]) != root)
  n = jnp.sum(others, axis=-1)
  dist = jnp.where(others, jnp.linalg.norm(rel, axis=-1), jnp.inf)
  # Masked median: excluded joints sort last (inf); average the middle two of
  # the first n entries (the same one when n is odd).
  ranked = jnp.sort(dist, axis=-1)
  lo = jnp.maximum((n - 1) // 2, 0)
  hi = n // 2
  pick = lambda i: jnp.take_along_axis(ranked, i[..., None], axis=-1)[..., 0]
  scale = jnp.where(n > 0, 0.5 * (pick(lo) + pick(hi)), 1.0)
  scale = jnp.maximum(scale, eps)
  normed = rel / scale[..., None, None] * w
  return jnp.concatenate([normed, w], axis=-1)


class LiftingMLP(nn.Module):
  """Residual MLP lifting normalised 2D joints to root-relative 3D.

  Linear(hidden)-BN-ReLU-dropout, then `num_blocks` residual blocks of two
  [Linear-BN-ReLU-dropout] layers, then Linear(3 K). As in the authors' code,
  the input layer also has BN-ReLU-dropout. Weights use He initialisation.
  The root joint's prediction is subtracted, so the output is exactly
  root-relative.

  Attributes:
    hidden: layer width (1024 full size).
    num_blocks: residual blocks.
    dropout_rate: dropout probability in training (rng name 'dropout').
    num_joints: K.
    root: index of the root joint.
  """
  hidden: int = 1024
  num_blocks: int = 2
  dropout_rate: float = 0.5
  num_joints: int = skeleton.NUM_JOINTS
  root: int = skeleton.ROOT

  @nn.compact
  def __call__(self, joints_2d: jax.Array, train: bool) -> jax.Array:
    """Lifts a batch of poses.

    Args:
      joints_2d: [B, K, 3] from `normalize_2d` (x, y, visibility), or
        [B, K, 2] normalised coordinates, which are taken as all visible.
      train: batch statistics and dropout (True) or running averages and no
        dropout (False). Training needs an rng named 'dropout'.

    Returns:
      float32 [B, K, 3] root-relative 3D joints in normalised units.
    """
    chex.assert_rank(joints_2d, 3)
    b, k, c = joints_2d.shape
    if k != self.num_joints or c not in (2, 3):
      raise ValueError(f'joints_2d must have shape [B, {self.num_joints}, 2 or '
                       f'3], got {joints_2d.shape}')
    x = joints_2d.astype(jnp.float32)
    if c == 2:
      x = jnp.concatenate([x, jnp.ones((b, k, 1), jnp.float32)], axis=-1)
    x = x.reshape(b, k * 3)

    def layer(y, name):
      y = nn.Dense(self.hidden, kernel_init=nn.initializers.he_normal(),
                   name=f'{name}_dense')(y)
      y = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, name=f'{name}_bn')(y)
      return nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(y))

    x = layer(x, 'input')
    for i in range(self.num_blocks):
      y = layer(x, f'block{i}_a')
      x = x + layer(y, f'block{i}_b')
    out = nn.Dense(k * 3, kernel_init=nn.initializers.he_normal(),
                   name='output')(x).reshape(b, k, 3)
    return out - out[:, self.root:self.root + 1]
