"""Occlusion-aware skeleton-map rasterizer (the paper's Sec. 3.1 and Fig. 3).

A skeleton map draws each of the 15 bones of `skeleton.BONES` as a stick of
width `l` in the bone's colour. Where sticks overlap, the *foreground* map shows
the bone nearest to the camera (it occludes the others) and the *background*
map the farthest one (it is occluded). The rule, per pixel, is exact:

* pixel (row i, col j) has centre `p = (j + 0.5, i + 0.5)`;
* bone `(a, b)` covers `p` when the distance from `p` to the segment `ab` is
  `<= stick_width / 2`;
* the bone's depth at `p` is `depth_a + t (depth_b - depth_a)` with `t` the
  projection parameter of `p` onto `ab`, clamped to [0, 1];
* `fg` takes the colour of the covering bone with the smallest depth, `bg` of
  the one with the largest; ties go to the lower bone index; uncovered = 0.

Implementation: per example and bone, the projection onto the bone axis and
the signed distance from it are sums of a row term and a column term, so one
pass over the 15 bones keeps a running (depth, bone) minimum and maximum per
pixel with about 20 vector operations per pixel-bone and no
[..., bones, H, W] intermediate. The pass writes one uint8
code per pixel (fg bone * 16 + bg bone); a table gather turns it into colours.
On CPU a `lax.cond` separates the two, since XLA would otherwise fuse the whole
bone pass into the colour gather and recompute it for every output channel.
Memory is O(batch * size^2).

Bad input: wrong shapes raise `ValueError`. Non-finite coordinates or depths of
visible joints raise `ValueError` when the arrays are concrete; under `jit` they
cannot be checked, and a bone with a non-finite end is simply not drawn (nor
is any bone when the stick width is non-finite or negative).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from deepskeleton_jax.geometry import skeleton

_BONES = np.asarray(skeleton.BONES, dtype=np.int32)
_NUM_BONES = skeleton.NUM_BONES
_NONE = _NUM_BONES  # Code of "no bone"; its colour is black.
_COLORS = np.concatenate(
    [skeleton.BONE_COLORS, np.zeros((1, 3), np.float32)]).astype(np.float32)
# Code c = fg * 16 + bg  ->  colour; rows for c // 16 or c % 16 == 15 are black.
_TABLES = {'fg': _COLORS[np.arange(256) // 16],
           'bg': _COLORS[np.arange(256) % 16]}
_TABLES['both'] = np.concatenate([_TABLES['fg'], _TABLES['bg']], axis=-1)
assert _NUM_BONES < 16  # Two bone indices (and "none") fit one uint8 code.

# Stick widths in configs are given in pixels of a 224 x 224 input crop.
INPUT_SIZE = 224


def stick_width_in_map(width_224: Any, size: int) -> Any:
  """Converts a stick width from 224-px input pixels to `size`-px map pixels.

  Args:
    width_224: width(s) in pixels of a 224 x 224 crop (scalar or array).
    size: side of the skeleton map in pixels.

  Returns:
    `width_224 * size / 224`, same type as `width_224`.
  """
  return width_224 * size / INPUT_SIZE


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_inputs(joints_2d, depth, stick_width, size, visible):
  """Validates shapes (always) and values (when concrete); returns leading.

  Shared with `soft_rasterize`: the arguments of `skeleton_maps`; raises
  ValueError as it documents.
  """
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise ValueError(f'size must be a static Python int, got {size!r}')
  if size < 1:
    raise ValueError(f'size must be >= 1, got {size}')
  nj = skeleton.NUM_JOINTS
  if joints_2d.ndim < 2 or joints_2d.shape[-2:] != (nj, 2):
    raise ValueError(f'joints_2d must have shape [..., {nj}, 2], '
                     f'got {joints_2d.shape}')
  lead = joints_2d.shape[:-2]
  if depth.shape != lead + (nj,):
    raise ValueError(f'depth must have shape {lead + (nj,)} ([..., {nj}] with '
                     f'the leading dims of joints_2d), got {depth.shape}')
  if visible is not None and visible.shape != lead + (nj,):
    raise ValueError(f'visible must have shape {lead + (nj,)} ([..., {nj}] '
                     f'with the leading dims of joints_2d), got '
                     f'{visible.shape}')
  try:
    width_shape = np.broadcast_shapes(np.shape(stick_width), lead)
  except ValueError:
    width_shape = None
  if width_shape != lead:
    raise ValueError(f'stick_width must be a scalar or broadcastable to the '
                     f'leading dims {lead}, got shape {np.shape(stick_width)}')
  if _is_concrete(stick_width):
    w = np.asarray(stick_width, np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
      raise ValueError(f'stick_width must be finite and >= 0, got {w}')
  if _is_concrete(joints_2d) and _is_concrete(depth) and (
      visible is None or _is_concrete(visible)):
    vis = (np.ones(lead + (nj,), bool) if visible is None
           else np.asarray(visible, bool))
    bad = vis & ~(np.all(np.isfinite(np.asarray(joints_2d)), axis=-1)
                  & np.isfinite(np.asarray(depth)))
    if np.any(bad):
      where = np.argwhere(bad)[:5].tolist()
      raise ValueError(
          'joints_2d / depth hold NaN or inf at visible joints (index '
          f'[..., joint]: {where}); mark them invisible or fix the input')
  return lead


def bone_endpoints(joints_2d, depth, visible):
  """Each bone's end points and depths, [N, 15, 2] and [N, 15], and `valid` [N, 15].

  A bone is valid when both joints are visible and finite; invalid bones get
  zeros, so that no NaN/inf reaches the per-pixel arithmetic (nor, in the soft
  rasterizer, its gradient: `where` on the inputs, not on the outputs).
  """
  a = joints_2d[:, _BONES[:, 0]]
  b = joints_2d[:, _BONES[:, 1]]
  depth_a = depth[:, _BONES[:, 0]]
  depth_b = depth[:, _BONES[:, 1]]
  valid = (visible[:, _BONES[:, 0]] & visible[:, _BONES[:, 1]]
           & jnp.all(jnp.isfinite(a) & jnp.isfinite(b), axis=-1)
           & jnp.isfinite(depth_a) & jnp.isfinite(depth_b))
  a = jnp.where(valid[..., None], a, 0.0)
  b = jnp.where(valid[..., None], b, 0.0)
  return a, b, jnp.where(valid, depth_a, 0.0), jnp.where(valid, depth_b, 0.0), valid


def _bone_params(joints_2d, depth, stick_width, visible):
  """Per-bone constants, each [N, 15] float32 (or bool for `valid`)."""
  a, b, depth_a, depth_b, valid = bone_endpoints(joints_2d, depth, visible)
  delta = b - a
  length = jnp.sqrt(jnp.sum(delta * delta, axis=-1))
  # A zero-length bone is a disc around `a`: any unit axis, length 0.
  point = length == 0.0
  safe = jnp.where(point, 1.0, length)
  ex = jnp.where(point, 1.0, delta[..., 0] / safe)
  ey = jnp.where(point, 0.0, delta[..., 1] / safe)
  slope = jnp.where(point, 0.0, (depth_b - depth_a) / safe)
  # Past `end` the clamped t is 1 and the depth is depth_b exactly (so that
  # two bones meeting at a joint tie there, as the rule says); a point bone
  # has t = 0 everywhere.
  end = jnp.where(point, jnp.inf, length)
  half = stick_width[:, None] / 2
  ok = valid & (half >= 0)  # False for NaN widths too.
  radius2 = jnp.where(ok, half * half, -1.0)
  return (a[..., 0], a[..., 1], ex, ey, length, end, depth_a, depth_b, slope,
          radius2)


def _bone_codes(joints_2d, depth, stick_width, visible, size):
  """uint8 [N, size, size]: fg bone index * 16 + bg bone index (15 = none)."""
  ax, ay, ex, ey, length, end, depth_a, depth_b, slope, radius2 = _bone_params(
      joints_2d, depth, stick_width, visible)
  centres = jnp.arange(size, dtype=jnp.float32) + 0.5
  dx = centres - ax[..., None]  # [N, 15, size] (column term)
  dy = centres - ay[..., None]  # [N, 15, size] (row term)
  # Along-axis coordinate s = (p - a) . e and normal coordinate n, separable.
  s_col, s_row = dx * ex[..., None], dy * ey[..., None]
  n_col, n_row = -dx * ey[..., None], dy * ex[..., None]
  n = joints_2d.shape[0]
  inf = jnp.float32(jnp.inf)
  near = jnp.full((n, size, size), inf)
  far = jnp.full((n, size, size), -inf)
  near_bone = jnp.full((n, size, size), _NONE, jnp.int32)
  far_bone = jnp.full((n, size, size), _NONE, jnp.int32)
  per_pixel = lambda x, k: x[:, k, None, None]
  for k in range(_NUM_BONES):  # Unrolled: one fused pass over the pixels.
    s = s_row[:, k, :, None] + s_col[:, k, None, :]
    nrm = n_row[:, k, :, None] + n_col[:, k, None, :]
    s_clamped = jnp.clip(s, 0.0, per_pixel(length, k))
    off = s - s_clamped
    covered = off * off + nrm * nrm <= per_pixel(radius2, k)
    bone_depth = jnp.where(
        s >= per_pixel(end, k), per_pixel(depth_b, k),
        per_pixel(depth_a, k) + s_clamped * per_pixel(slope, k))
    nearer = covered & (bone_depth < near)  # Strict: ties keep lower index.
    farther = covered & (bone_depth > far)
    near = jnp.where(nearer, bone_depth, near)
    near_bone = jnp.where(nearer, k, near_bone)
    far = jnp.where(farther, bone_depth, far)
    far_bone = jnp.where(farther, k, far_bone)
  return (near_bone * 16 + far_bone).astype(jnp.uint8)


@jax.custom_batching.custom_vmap
def _cond_barrier(x: jax.Array) -> jax.Array:
  # Both branches are the identity; the conditional only stops XLA:CPU from
  # fusing x's producer into its consumers (optimization_barrier does not).
  # `y + 0` keeps JAX from forwarding x around a cond of two identities.
  flat = x.reshape(-1)[:1]
  return lax.cond(jnp.any(flat != 0), lambda y: y, lambda y: y + 0, x)


@_cond_barrier.def_vmap
def _cond_barrier_vmap(axis_size, in_batched, x):
  del axis_size  # The barrier is shape-agnostic; under vmap keep it a cond.
  return _cond_barrier(x), in_batched[0]


def _fusion_barrier(x: jax.Array) -> jax.Array:
  return lax.platform_dependent(x, cpu=_cond_barrier, default=lambda y: y)


@functools.partial(jax.jit, static_argnames=('size', 'tables'))
def _render(joints_2d, depth, stick_width, visible, size, tables):
  """Codes for the flattened leading dims, then one gather per table."""
  lead = depth.shape[:-1]
  nj = skeleton.NUM_JOINTS
  n = int(np.prod(lead, dtype=np.int64))
  if visible is None:
    visible = jnp.ones((n, nj), bool)
  width = jnp.broadcast_to(jnp.asarray(stick_width, jnp.float32), lead)
  codes = _bone_codes(
      joints_2d.reshape(n, nj, 2).astype(jnp.float32),
      depth.reshape(n, nj).astype(jnp.float32),
      width.reshape(n), visible.reshape(n, nj).astype(bool), size)
  codes = _fusion_barrier(codes).reshape(lead + (size, size))
  return tuple(jnp.asarray(_TABLES[name])[codes] for name in tables)


def _validated(joints_2d, depth, stick_width, size, visible):
  joints_2d = jnp.asarray(joints_2d)
  depth = jnp.asarray(depth)
  visible = None if visible is None else jnp.asarray(visible)
  check_inputs(joints_2d, depth, stick_width, size, visible)
  return joints_2d, depth, stick_width, visible, int(size)


def skeleton_maps(joints_2d: Any, depth: Any, stick_width: Any, size: int,
                  visible: Any = None) -> tuple[jax.Array, jax.Array]:
  """Renders the foreground and background skeleton maps.

  Pure jnp: jit-able (with `size` static) and vmap-able; any leading batch
  dims are rendered in one pass.

  Args:
    joints_2d: [..., 16, 2] joint (x, y) in map pixels (pixel (i, j) covers
      [j, j+1) x [i, i+1)). Joints may lie outside the map.
    depth: [..., 16] joint depths (any unit; smaller = nearer the camera).
    stick_width: stick width in map pixels (see `stick_width_in_map`), a
      scalar or an array broadcastable to the leading dims `...` (e.g. one
      width per hypothesis).
    size: side of the square map in pixels (static int).
    visible: optional [..., 16] bool; a bone is drawn only if both of its
      joints are visible. Default: all visible.

  Returns:
    (fg, bg), each float32 [..., size, size, 3]: per pixel the colour
    (`skeleton.BONE_COLORS`) of the nearest (fg) / farthest (bg) covering bone,
    0 where no bone covers the pixel.

  Raises:
    ValueError: for wrong shapes, a bad `size`, and, when the inputs are
      concrete, non-finite coordinates or depths of visible joints or a
      negative or non-finite stick width. Under `jit` such bones (widths) are
      not drawn instead.
  """
  args = _validated(joints_2d, depth, stick_width, size, visible)
  return _render(*args, tables=('fg', 'bg'))


def render_targets(joints_2d: Any, depth: Any, visible: Any, stick_widths: Any,
                   size: int) -> jax.Array:
  """Renders the 6-channel (fg RGB, bg RGB) skeleton-map stack.

  Same rule as `skeleton_maps`, concatenated on the channel axis in one
  gather (the SkeletonMapNet target and the PoseRegressor input layout).

  Args:
    joints_2d: [..., 16, 2] joints in map pixels.
    depth: [..., 16] joint depths.
    visible: [..., 16] bool, or None for all visible.
    stick_widths: widths in map pixels, broadcastable to the leading dims.
    size: map side in pixels (static int).

  Returns:
    float32 [..., size, size, 6]: fg RGB then bg RGB.
  """
  args = _validated(joints_2d, depth, stick_widths, size, visible)
  return _render(*args, tables=('both',))[0]
