"""A differentiable skeleton-map rasterizer: soft coverage, soft depth order.

`soft_skeleton_maps` takes the arguments of `rasterize.skeleton_maps` and
returns maps of the same shapes, smooth in the joints and depths, so a 3D
pose can be rendered and fitted to predicted maps by gradient descent
(`inference/render_compare.py`). The rule of `rasterize.py`, softened:

* bone k at pixel centre p: t the projection parameter of p onto the segment
  ab clamped to [0, 1], d the distance from p to the segment, z_k the depth
  `depth_a + t (depth_b - depth_a)` (exactly `depth_b` where t = 1);
* coverage c_k = sigmoid((stick_width / 2 - d) / temperature) (temperature in
  map pixels; 0 where a joint of the bone is invisible);
* "bone j is in front of bone k" has probability
  P_jk = sigmoid((z_k - z_j + TIE_BREAK s_jk) / depth_temperature), s_jk = +1
  for j < k and -1 for j > k (equal depths go to the lower bone index, as the
  exact rule says), and the foreground is the "over" composite
  fg = sum_k c_k prod_{j != k} (1 - c_j P_jk) colour_k;
  the background the same with "in front" read as "farther".

With coverages in {0, 1} and orders in {0, 1} the composite is exactly the
exact rule (the nearest covering bone has weight 1, every other 0, no bone 0),
so as both temperatures go to 0 the maps converge to `rasterize.skeleton_maps`
at every pixel whose centre is not on a stick's edge and whose covering bones
do not have depths within TIE_BREAK of one another.

Cost: O(15^2) per pixel (the exact rasterizer is O(15)); memory
O(N * 15 * size^2) with N the number of poses (the backward pass keeps about
30 such arrays). Pure jnp: jit with `size` static, vmap and grad over joints,
depths, widths and temperatures.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.geometry import skeleton

_NUM_BONES = skeleton.NUM_BONES
# Equal depths: the lower bone index is in front (fg) / behind (bg) by this
# much, in depth units (1 um for poses in mm).
TIE_BREAK = 1e-3
# Keeps the distance to a stick's axis differentiable on the axis (map px).
_AXIS_EPS = 1e-3
_TINY = 1e-30


def _coverage_and_depth(joints_2d, depth, half_width, visible, size, temperature):
  """Soft coverage and depth of every bone at every pixel, each [N, 15, S, S]."""
  a, b, depth_a, depth_b, valid = rasterize.bone_endpoints(joints_2d, depth, visible)
  per_pixel = lambda x: x[..., None, None]
  delta = b - a
  length2 = jnp.sum(delta * delta, axis=-1)
  point = length2 == 0.0
  safe_length2 = jnp.where(point, 1.0, length2)
  centres = jnp.arange(size, dtype=joints_2d.dtype) + 0.5
  rel_x = centres[None, None, None, :] - per_pixel(a[..., 0])   # columns
  rel_y = centres[None, None, :, None] - per_pixel(a[..., 1])   # rows
  t = (rel_x * per_pixel(delta[..., 0]) + rel_y * per_pixel(delta[..., 1])
       ) / per_pixel(safe_length2)
  t = jnp.where(per_pixel(point), 0.0, jnp.clip(t, 0.0, 1.0))
  off_x = rel_x - t * per_pixel(delta[..., 0])
  off_y = rel_y - t * per_pixel(delta[..., 1])
  dist = jnp.sqrt(off_x * off_x + off_y * off_y + _AXIS_EPS**2)
  z = jnp.where(t >= 1.0, per_pixel(depth_b),
                per_pixel(depth_a) + t * per_pixel(depth_b - depth_a))
  tau = jnp.maximum(temperature, _TINY)
  cover = jax.nn.sigmoid((per_pixel(half_width[:, None]) - dist) / tau)
  ok = valid & (half_width[:, None] >= 0)  # False for NaN widths too.
  return jnp.where(per_pixel(ok), cover, 0.0), z


def _composite(cover, z, depth_temperature, nearest: bool):
  """Colours [N, S, S, 3] of the nearest (or farthest) covering bone, softly."""
  gamma = jnp.maximum(depth_temperature, _TINY)
  order = jnp.arange(_NUM_BONES)
  sign = 1.0 if nearest else -1.0
  weights = cover
  for j in range(_NUM_BONES):  # Unrolled: 15 fused passes over [N, 15, S, S].
    wins_ties = jnp.where(order > j, 1.0, -1.0)[None, :, None, None]
    ahead = jax.nn.sigmoid(
        (sign * (z - z[:, j:j + 1]) + TIE_BREAK * wins_ties) / gamma)
    others = (order != j)[None, :, None, None]
    weights = weights * jnp.where(others, 1.0 - cover[:, j:j + 1] * ahead, 1.0)
  colors = jnp.asarray(skeleton.BONE_COLORS, weights.dtype)
  return jnp.einsum('nkhw,kc->nhwc', weights, colors)


@functools.partial(jax.jit, static_argnames=('size', 'tables'))
def _render(joints_2d, depth, stick_width, visible, size, temperature,
            depth_temperature, tables):
  lead = depth.shape[:-1]
  nj = skeleton.NUM_JOINTS
  n = int(np.prod(lead, dtype=np.int64))
  dtype = jnp.result_type(joints_2d.dtype, depth.dtype, jnp.float32)
  if visible is None:
    visible = jnp.ones((n, nj), bool)
  width = jnp.broadcast_to(jnp.asarray(stick_width, dtype), lead).reshape(n)
  cover, z = _coverage_and_depth(
      joints_2d.reshape(n, nj, 2).astype(dtype), depth.reshape(n, nj).astype(dtype),
      width / 2, visible.reshape(n, nj).astype(bool), size,
      jnp.asarray(temperature, dtype))
  gamma = jnp.asarray(depth_temperature, dtype)
  maps = [_composite(cover, z, gamma, nearest=True),
          _composite(cover, z, gamma, nearest=False)]
  if tables == 'both':
    maps = [jnp.concatenate(maps, axis=-1)]
  return tuple(m.reshape(lead + m.shape[1:]) for m in maps)


def _validated(joints_2d, depth, stick_width, size, visible, temperature,
               depth_temperature):
  joints_2d = jnp.asarray(joints_2d)
  depth = jnp.asarray(depth)
  visible = None if visible is None else jnp.asarray(visible)
  rasterize.check_inputs(joints_2d, depth, stick_width, size, visible)
  for name, value in (('temperature', temperature),
                      ('depth_temperature', depth_temperature)):
    if np.ndim(value) != 0:
      raise ValueError(f'{name} must be a scalar, got shape {np.shape(value)}')
    if not isinstance(value, jax.core.Tracer) and not (
        np.isfinite(value) and value >= 0):
      raise ValueError(f'{name} must be finite and >= 0, got {value!r}')
  return joints_2d, depth, stick_width, visible, int(size), temperature, depth_temperature


def soft_skeleton_maps(joints_2d: Any, depth: Any, stick_width: Any, size: int,
                       visible: Any = None, *, temperature: Any = 0.25,
                       depth_temperature: Any = 10.0) -> tuple[jax.Array, jax.Array]:
  """Renders soft foreground and background skeleton maps (see the module doc).

  Args:
    joints_2d: [..., 16, 2] joint (x, y) in map pixels, as in
      `rasterize.skeleton_maps`.
    depth: [..., 16] joint depths (smaller = nearer the camera).
    stick_width: stick width in map pixels, a scalar or an array
      broadcastable to the leading dims.
    size: side of the square map in pixels (static int).
    visible: optional [..., 16] bool; a bone is drawn only if both of its
      joints are visible. Default: all visible.
    temperature: edge softness in map pixels (scalar >= 0; 0 = hard edges).
    depth_temperature: depth-order softness in depth units (scalar >= 0;
      0 = hard order).

  Returns:
    (fg, bg), each [..., size, size, 3] (float32, or float64 for float64
    inputs): per pixel the coverage-and-order-weighted bone colours.

  Raises:
    ValueError: as `rasterize.skeleton_maps`, and for a temperature that is
      not a finite scalar >= 0.
  """
  args = _validated(joints_2d, depth, stick_width, size, visible, temperature,
                    depth_temperature)
  return _render(*args, tables='fg_bg')


def soft_render_targets(joints_2d: Any, depth: Any, visible: Any, stick_widths: Any,
                        size: int, *, temperature: Any = 0.25,
                        depth_temperature: Any = 10.0) -> jax.Array:
  """The 6-channel (fg RGB, bg RGB) soft map stack, as `rasterize.render_targets`.

  Args:
    joints_2d: [..., 16, 2] joints in map pixels.
    depth: [..., 16] joint depths.
    visible: [..., 16] bool, or None for all visible.
    stick_widths: widths in map pixels, broadcastable to the leading dims.
    size: map side in pixels (static int).
    temperature: edge softness in map pixels.
    depth_temperature: depth-order softness in depth units.

  Returns:
    [..., size, size, 6]: fg RGB then bg RGB.
  """
  args = _validated(joints_2d, depth, stick_widths, size, visible, temperature,
                    depth_temperature)
  return _render(*args, tables='both')[0]
