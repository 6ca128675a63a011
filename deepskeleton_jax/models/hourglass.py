"""Stacked Hourglass 2D joint detector (Newell, Yang, Deng, ECCV 2016).

The 2D detector of the pipeline: its detections drive hypothesis matching and
give the PCKh numbers on MPII. Besides the network this module holds the
Gaussian heatmap targets, the intermediate-supervision loss and sub-pixel
heatmap decoding (published detection files: `evaluation/detections.py`), and
the integral alternative (Sun et al., ECCV 2018): maps read as logits,
decoded by their soft-argmax and trained with L1 on it.

Architecture (Newell et al.'s released Torch model): 7x7/2 conv (64) + BN +
ReLU, Residual(128), 2x2 max pool, Residual(128), Residual(F); then per stack
an hourglass of `depth` levels (max pool down, nearest-neighbour up, a
Residual skip branch at every level), Residual(F), a 1x1 conv-BN-ReLU, and a
1x1 conv to the joint heatmaps. Every stack but the last remaps its features
and its heatmaps with 1x1 convs and adds both to its input, which feeds the
next stack. Residual(C) is the pre-activation bottleneck
BN-ReLU-conv1x1(C/2)-BN-ReLU-conv3x3(C/2)-BN-ReLU-conv1x1(C), with a 1x1 conv
skip when the input width differs. Convolutions carry biases, as in the
original. The heatmaps are at 1/4 of the input resolution (64x64 for 256x256).

Heatmap pixels follow the continuous convention of docs/DESIGN.md: pixel (row i,
col j) covers [j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5); a joint
at heatmap position (x, y) is the point (x, y) itself, so image pixels map to
heatmap pixels by plain scaling (x_hm = x_img * h / S).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.models import layers

Array = Any


class Hourglass(nn.Module):
  """One hourglass of `depth` levels at width `features`."""
  depth: int
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    res = lambda name: layers.PreActBottleneck(self.features, self.dtype, name=name)
    up1 = res('up1')(x, train)
    low = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    low = res('low1')(low, train)
    if self.depth > 1:
      low = Hourglass(self.depth - 1, self.features, self.dtype,
                      name='inner')(low, train)
    else:
      low = res('low2')(low, train)
    low = res('low3')(low, train)
    up2 = jnp.repeat(jnp.repeat(low, 2, axis=1), 2, axis=2)
    return up1 + up2


class StackedHourglass(nn.Module):
  """Stacked Hourglass network with intermediate supervision.

  Attributes:
    num_stacks: number of hourglasses (2 here; 8 in the paper's best model).
    num_features: width F of the hourglasses (256 full size, 16-32 tiny).
    num_joints: heatmap channels.
    depth: levels per hourglass (4: 64 -> 4 px at 256 input).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and the returned
      heatmaps are float32.
  """
  num_stacks: int = 2
  num_features: int = 256
  num_joints: int = skeleton.NUM_JOINTS
  depth: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
    """Predicts one set of heatmaps per stack.

    Args:
      x: [B, S, S, 3] images; S divisible by 4 * 2**depth.
      train: batch statistics (True) or running averages (False).

    Returns:
      num_stacks float32 arrays [B, S/4, S/4, num_joints], the last one the
      final prediction.
    """
    chex.assert_rank(x, 4)
    step = 4 * 2**self.depth
    if x.shape[1] % step or x.shape[2] % step:
      raise ValueError(f'x spatial size {x.shape[1:3]} must be divisible by '
                       f'{step} (4 * 2**depth, depth={self.depth})')
    f = self.num_features
    norm = lambda name: nn.BatchNorm(use_running_average=not train,
                                     momentum=0.9, epsilon=1e-5,
                                     dtype=self.dtype, name=name)
    conv1x1 = lambda c, name: nn.Conv(c, (1, 1), dtype=self.dtype, name=name)

    # The stem's widths follow F (Newell's 64 and 128 at F = 256), so narrow
    # test/demo models are not dominated by a full-width stem at S/2.
    x = x.astype(self.dtype)
    x = nn.Conv(max(f // 4, 8), (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                dtype=self.dtype, name='stem_conv')(x)
    x = nn.relu(norm('stem_bn')(x))
    x = layers.PreActBottleneck(max(f // 2, 8), self.dtype, name='stem_res1')(x, train)
    x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = layers.PreActBottleneck(max(f // 2, 8), self.dtype, name='stem_res2')(x, train)
    x = layers.PreActBottleneck(f, self.dtype, name='stem_res3')(x, train)

    heatmaps = []
    for s in range(self.num_stacks):
      y = Hourglass(self.depth, f, self.dtype, name=f'hg{s}')(x, train)
      y = layers.PreActBottleneck(f, self.dtype, name=f'res{s}')(y, train)
      y = nn.relu(norm(f'lin_bn{s}')(conv1x1(f, f'lin{s}')(y)))
      hm = conv1x1(self.num_joints, f'head{s}')(y)
      heatmaps.append(hm.astype(jnp.float32))
      if s < self.num_stacks - 1:
        x = x + conv1x1(f, f'remap_feat{s}')(y) + conv1x1(f, f'remap_hm{s}')(hm)
    return heatmaps


def heatmap_targets(joints_2d: Array, visible: Array, size: int,
                    sigma: float = 1.0) -> jax.Array:
  """Renders unnormalised Gaussian heatmaps (peak 1 at the joint).

  Args:
    joints_2d: [..., K, 2] joint positions (x, y) in heatmap pixels.
    visible: [..., K] bool; invisible joints get an all-zero map.
    size: heatmap side (static).
    sigma: Gaussian standard deviation in heatmap pixels.

  Returns:
    float32 [..., size, size, K]: exp(-|c - joint|^2 / (2 sigma^2)) at every
    pixel centre c = (j + 0.5, i + 0.5).
  """
  chex.assert_shape(joints_2d, (..., None, 2))
  if np.shape(visible) != np.shape(joints_2d)[:-1]:
    raise ValueError(f'visible must have shape {np.shape(joints_2d)[:-1]}, '
                     f'got {np.shape(visible)}')
  joints = jnp.asarray(joints_2d, jnp.float32)
  centres = jnp.arange(size, dtype=jnp.float32) + 0.5
  scale = -0.5 / (sigma * sigma)
  gx = jnp.exp(scale * (centres - joints[..., 0:1])**2)  # [..., K, size]
  gy = jnp.exp(scale * (centres - joints[..., 1:2])**2)
  maps = gy[..., :, None] * gx[..., None, :]  # [..., K, y, x]
  maps = maps * jnp.asarray(visible, jnp.float32)[..., None, None]
  return jnp.moveaxis(maps, -3, -1)


def heatmap_loss(heatmaps: Sequence[jax.Array], targets: jax.Array,
                 visible: jax.Array) -> jax.Array:
  """Intermediate-supervision MSE: mean over stacks of the masked MSE.

  Each stack's MSE is the mean squared error over the pixels of the visible
  joints' maps (sum over visible maps / (number of visible maps * h * w));
  invisible joints contribute nothing.

  Args:
    heatmaps: one [B, h, w, K] prediction per stack.
    targets: [B, h, w, K] from `heatmap_targets`.
    visible: [B, K] bool.

  Returns:
    float32 scalar.
  """
  if not heatmaps:
    raise ValueError('heatmaps must be a non-empty list of [B, h, w, K] arrays')
  chex.assert_rank(targets, 4)
  chex.assert_shape(visible, (targets.shape[0], targets.shape[3]))
  weight = jnp.asarray(visible, jnp.float32)[:, None, None, :]
  count = jnp.sum(weight) * targets.shape[1] * targets.shape[2]
  losses = []
  for hm in heatmaps:
    chex.assert_equal_shape((hm, targets))
    err = (hm.astype(jnp.float32) - targets)**2
    losses.append(jnp.sum(err * weight) / jnp.maximum(count, 1.0))
  return jnp.mean(jnp.stack(losses))


def soft_argmax(heatmaps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Integral decoding (Sun et al., ECCV 2018): the softmax-weighted mean position.

  Each map is read as logits; its softmax over the pixels is a distribution
  whose mean, at pixel centres (j + 0.5, i + 0.5), is the joint.

  Args:
    heatmaps: [B, h, w, K] logits.

  Returns:
    joints: float32 [B, K, 2] continuous (x, y) in heatmap pixels.
    confidence: float32 [B, K], the largest probability mass in a 3x3 pixel
      window (1 for a peaked map, 9 / (h w) for a flat one), so that like
      `decode_heatmaps`' peak value it is about 1 for a sure detection.
  """
  chex.assert_rank(heatmaps, 4)
  b, h, w, k = heatmaps.shape
  flat = jnp.moveaxis(heatmaps.astype(jnp.float32), -1, 1).reshape(b, k, h * w)
  prob = jax.nn.softmax(flat, axis=-1).reshape(b, k, h, w)
  xs = jnp.sum(prob.sum(axis=2) * (jnp.arange(w, dtype=jnp.float32) + 0.5), axis=-1)
  ys = jnp.sum(prob.sum(axis=3) * (jnp.arange(h, dtype=jnp.float32) + 0.5), axis=-1)
  mass = jax.lax.reduce_window(prob, 0.0, jax.lax.add, (1, 1, 3, 3), (1, 1, 1, 1), 'SAME')
  return jnp.stack([xs, ys], axis=-1), jnp.max(mass.reshape(b, k, h * w), axis=-1)


def integral_loss(heatmaps: Sequence[jax.Array], joints_2d: jax.Array,
                  visible: jax.Array) -> jax.Array:
  """Intermediate-supervision integral loss: mean over stacks of the masked L1.

  Each stack's loss is the mean absolute coordinate error of `soft_argmax`
  over the visible joints (heatmap pixels, x and y averaged).

  Args:
    heatmaps: one [B, h, w, K] logit map per stack.
    joints_2d: [B, K, 2] targets (x, y) in heatmap pixels.
    visible: [B, K] bool.

  Returns:
    float32 scalar.
  """
  if not heatmaps:
    raise ValueError('heatmaps must be a non-empty list of [B, h, w, K] arrays')
  chex.assert_shape(joints_2d, (heatmaps[0].shape[0], heatmaps[0].shape[3], 2))
  chex.assert_shape(visible, joints_2d.shape[:2])
  weight = jnp.asarray(visible, jnp.float32)[..., None]
  count = 2.0 * jnp.sum(weight)
  losses = []
  for hm in heatmaps:
    err = jnp.abs(soft_argmax(hm)[0] - joints_2d)
    losses.append(jnp.sum(err * weight) / jnp.maximum(count, 1.0))
  return jnp.mean(jnp.stack(losses))


def decode_heatmaps(heatmaps: jax.Array,
                    eps: float = 1e-10) -> tuple[jax.Array, jax.Array]:
  """Argmax with sub-pixel refinement by a quadratic fit to the log heatmap.

  Per axis, a parabola is fitted through the log values of three consecutive
  pixels around the argmax (the window is shifted inwards at the map border)
  and its vertex is taken (as in DARK, Zhang et al. CVPR 2020, without the
  blur). A Gaussian's log is exactly quadratic, so for a `heatmap_targets` map
  the vertex is the Gaussian's centre up to float error. The result is
  clamped to the argmax pixel's extent [j, j+1) x [i, i+1), which for a
  Gaussian sampled at pixel centres always contains the centre, and which
  keeps noisy maps from moving far; a non-concave fit falls back to the
  argmax pixel's centre.

  Args:
    heatmaps: [B, h, w, K], h and w >= 3.
    eps: floor applied before the logarithm (maps may be <= 0).

  Returns:
    joints: float32 [B, K, 2] continuous (x, y) in heatmap pixels.
    confidence: float32 [B, K], the maximum value of each map.
  """
  chex.assert_rank(heatmaps, 4)
  b, h, w, k = heatmaps.shape
  if h < 3 or w < 3:
    raise ValueError(f'heatmaps must be at least 3x3, got {h}x{w}')
  flat = jnp.moveaxis(heatmaps.astype(jnp.float32), -1, 1).reshape(b, k, h * w)
  index = jnp.argmax(flat, axis=-1)
  confidence = jnp.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
  row, col = index // w, index % w
  logs = jnp.log(jnp.maximum(flat, eps))
  offsets = jnp.arange(-1, 2)

  def refine(pos, other, n, stride_pos, stride_other):
    centre = jnp.clip(pos, 1, n - 2)
    idx = ((centre[..., None] + offsets) * stride_pos
           + other[..., None] * stride_other)
    lm, l0, lp = jnp.moveaxis(jnp.take_along_axis(logs, idx, axis=-1), -1, 0)
    curv = lm - 2.0 * l0 + lp
    concave = curv < 0
    vertex = 0.5 * (lm - lp) / jnp.where(concave, curv, -1.0)
    coord = jnp.where(concave, centre + 0.5 + vertex, pos + 0.5)
    return jnp.clip(coord, pos, pos + 1.0)

  x = refine(col, row, w, 1, w)
  y = refine(row, col, h, w, 1)
  return jnp.stack([x, y], axis=-1), confidence
