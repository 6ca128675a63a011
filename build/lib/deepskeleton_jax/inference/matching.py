"""Hypothesis selection by 2D reprojection error (the paper's Sec. 3.4, Eq. 1).

Each 3D hypothesis is projected into the image with the camera fitted to it,
and the one whose projection best matches the 2D detections is kept:
X* = argmin_i ||Proj(X_i) - x||^2 over the visible joints.

Two camera models:
- scaled orthographic (MPII: no camera), x ~= s X_xy + o with the scale s and
  offset o fitted per hypothesis in closed form
  (`camera.fit_scaled_orthographic`);
- perspective (Human3.6M, `intrinsics` = (f_x, f_y, c_x, c_y)): the hypothesis
  is root-relative, its root translation T = (t_x, t_y, t_z) is fitted per
  hypothesis by linear least squares. u = f_x (X + t_x) / (Z + t_z) + c_x,
  multiplied by (Z + t_z), gives f_x t_x + (c_x - u) t_z = (u - c_x) Z - f_x X
  (likewise for v), linear in T; the weighted 3x3 normal equations over the
  visible joints are solved and the hypothesis is projected with the pinhole
  model. (This minimises the algebraic, depth-weighted residual, not the pixel
  error itself; the error reported is the pixel error of that fit.)

Everything is pure jnp, vectorised with `jax.vmap` over hypotheses and batch,
and jit-able. Shape errors raise ValueError at trace time.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.geometry import skeleton

Array = Any

_EPS = 1e-8


def _shape(x: Array) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _check_inputs(hyps: Array, joints_2d: Array, visible: Array | None,
                  intrinsics: Array | None) -> tuple[int, ...]:
  """Validates shapes; returns the broadcast batch shape."""
  hs = _shape(hyps)
  if len(hs) < 3 or hs[-1] != 3 or hs[-3] < 1:
    raise ValueError(f'hyps must have shape [..., H, K, 3] with H >= 1, got {hs}')
  k = hs[-2]
  js = _shape(joints_2d)
  if len(js) < 2 or js[-2:] != (k, 2):
    raise ValueError(f'joints_2d must have shape [..., {k}, 2] (K from hyps), '
                     f'got {js}')
  batches = [hs[:-3], js[:-2]]
  if visible is not None:
    vs = _shape(visible)
    if len(vs) < 1 or vs[-1] != k:
      raise ValueError(f'visible must have shape [..., {k}], got {vs}')
    batches.append(vs[:-1])
  if intrinsics is not None:
    cs = _shape(intrinsics)
    if len(cs) < 1 or cs[-1] != 4:
      raise ValueError('intrinsics must have shape [..., 4] (f_x, f_y, c_x, '
                       f'c_y), got {cs}')
    batches.append(cs[:-1])
  try:
    return tuple(jnp.broadcast_shapes(*batches))  # jnp: symbolic (exported) batch dims
  except ValueError:
    raise ValueError(
        'leading dimensions of hyps [..., H, K, 3], joints_2d [..., K, 2], '
        f'visible [..., K] and intrinsics [..., 4] must broadcast, got {hs}, '
        f'{js}, {_shape(visible)}, {_shape(intrinsics)}') from None


def _weighted_sq_error(proj: jax.Array, joints_2d: jax.Array,
                       w: jax.Array) -> jax.Array:
  """Mean over weighted joints of the squared pixel distance."""
  sq = jnp.sum((proj - joints_2d)**2, axis=-1)
  sq = jnp.where(w > 0, sq, 0.0)   # Joints with weight 0 may project to inf.
  return jnp.sum(w * sq) / jnp.maximum(jnp.sum(w), _EPS)


def _orthographic_error(hyp: jax.Array, joints_2d: jax.Array,
                        w: jax.Array) -> jax.Array:
  """One hypothesis [K, 3] against detections [K, 2], scaled orthographic."""
  scale, offset = camera.fit_scaled_orthographic(hyp, joints_2d, w)
  proj = scale * hyp[:, :2] + offset
  return _weighted_sq_error(proj, joints_2d, w)


def _root_translation(hyp: jax.Array, joints_2d: jax.Array, w: jax.Array,
                      intrinsics: jax.Array) -> jax.Array:
  """Least-squares T [3] for one root-relative hypothesis [K, 3]."""
  fx, fy, cx, cy = intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3]
  x, y, z = hyp[:, 0], hyp[:, 1], hyp[:, 2]
  u, v = joints_2d[:, 0], joints_2d[:, 1]
  zeros, ones = jnp.zeros_like(u), jnp.ones_like(u)
  # Rows of f_x t_x + (c_x - u) t_z = (u - c_x) Z - f_x X (and for v), all
  # divided by f_x (one common factor: same solution, better conditioned).
  a_u = jnp.stack([ones, zeros, (cx - u) / fx], axis=-1)
  a_v = jnp.stack([zeros, ones * fy / fx, (cy - v) / fx], axis=-1)
  b_u = ((u - cx) * z - fx * x) / fx
  b_v = ((v - cy) * z - fy * y) / fx
  a = jnp.concatenate([a_u, a_v], axis=0)          # [2K, 3]
  b = jnp.concatenate([b_u, b_v], axis=0)          # [2K]
  ww = jnp.concatenate([w, w], axis=0)
  b = jnp.where(ww > 0, b, 0.0)
  normal = jnp.einsum('ki,k,kj->ij', a, ww, a)
  rhs = jnp.einsum('ki,k,k->i', a, ww, b)
  # Pseudo-inverse: fewer than two visible joints leave T underdetermined,
  # and then the minimum-norm solution (any fits them exactly) is used.
  return jnp.linalg.pinv(normal, hermitian=True) @ rhs


def _perspective_error(hyp: jax.Array, joints_2d: jax.Array, w: jax.Array,
                       intrinsics: jax.Array) -> jax.Array:
  """One root-relative hypothesis [K, 3] against detections, pinhole camera."""
  points = hyp + _root_translation(hyp, joints_2d, w, intrinsics)
  depth = points[:, 2:3]
  depth = jnp.where(jnp.abs(depth) < _EPS, _EPS, depth)
  proj = points[:, :2] / depth * intrinsics[:2] + intrinsics[2:]
  return _weighted_sq_error(proj, joints_2d, w)


def _prepare(hyps, joints_2d, visible, intrinsics):
  """Casts, broadcasts and flattens the batch; returns arrays and batch shape."""
  batch = _check_inputs(hyps, joints_2d, visible, intrinsics)
  h, k = _shape(hyps)[-3:-1]
  hyps = jnp.broadcast_to(jnp.asarray(hyps, jnp.float32), batch + (h, k, 3))
  joints_2d = jnp.broadcast_to(jnp.asarray(joints_2d, jnp.float32),
                               batch + (k, 2))
  if visible is None:
    w = jnp.ones(batch + (k,), jnp.float32)
  else:
    w = jnp.broadcast_to(jnp.asarray(visible).astype(jnp.float32), batch + (k,))
  # Undetected joints may carry NaN or sentinel coordinates: zero them.
  joints_2d = jnp.where(w[..., None] > 0, joints_2d, 0.0)
  flat = (hyps.reshape(-1, h, k, 3), joints_2d.reshape(-1, k, 2),
          w.reshape(-1, k))
  if intrinsics is not None:
    intrinsics = jnp.broadcast_to(jnp.asarray(intrinsics, jnp.float32),
                                  batch + (4,))
    flat += (intrinsics.reshape(-1, 4),)
  return flat, batch


def reprojection_error(hyps: Array, joints_2d: Array, visible: Array | None,
                       intrinsics: Array | None = None) -> jax.Array:
  """Mean squared pixel distance of each hypothesis' fitted projection.

  Args:
    hyps: [..., H, K, 3] 3D hypotheses (mm; root-relative for the perspective
      model).
    joints_2d: [..., K, 2] 2D detections (pixels).
    visible: [..., K] bool or non-negative weights (None: all joints).
    intrinsics: None for the scaled-orthographic model, else [..., 4]
      (f_x, f_y, c_x, c_y) in the pixels of `joints_2d`.

  Returns:
    [..., H] float32 mean over visible joints of the squared pixel distance
    (0 where no joint is visible).
  """
  flat, batch = _prepare(hyps, joints_2d, visible, intrinsics)
  if intrinsics is None:
    per_hyp = jax.vmap(_orthographic_error, in_axes=(0, None, None))
  else:
    per_hyp = jax.vmap(_perspective_error, in_axes=(0, None, None, None))
  errors = jax.vmap(per_hyp)(*flat)                 # [B, H]
  return errors.reshape(batch + errors.shape[-1:])


def fit_root_translation(hyps: Array, joints_2d: Array, visible: Array | None,
                         intrinsics: Array) -> jax.Array:
  """Root translation of each hypothesis fitted as in `reprojection_error`.

  Args:
    hyps: [..., H, K, 3] root-relative hypotheses (mm).
    joints_2d: [..., K, 2] 2D detections (pixels).
    visible: [..., K] bool or weights (None: all joints).
    intrinsics: [..., 4] (f_x, f_y, c_x, c_y).

  Returns:
    [..., H, 3] translations T (mm) such that `hyps + T` is in the camera frame.
  """
  if intrinsics is None:
    raise ValueError('intrinsics must have shape [..., 4], got None')
  flat, batch = _prepare(hyps, joints_2d, visible, intrinsics)
  fit = jax.vmap(jax.vmap(_root_translation, in_axes=(0, None, None, None)))
  t = fit(*flat)                                    # [B, H, 3]
  return t.reshape(batch + t.shape[-2:])


def _take_hypothesis(hyps: jax.Array, index: jax.Array) -> jax.Array:
  picked = jnp.take_along_axis(hyps, index[..., None, None, None], axis=-3)
  return picked[..., 0, :, :]


def select(hyps: Array, joints_2d: Array, visible: Array | None,
           intrinsics: Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Picks the hypothesis with the least reprojection error (paper Eq. 1).

  Args:
    hyps: [..., H, K, 3].
    joints_2d: [..., K, 2].
    visible: [..., K] bool or weights (None: all joints).
    intrinsics: None (scaled orthographic) or [..., 4].

  Returns:
    (index [...] int32, pose [..., K, 3]); ties go to the lower index.
  """
  errors = reprojection_error(hyps, joints_2d, visible, intrinsics)
  index = jnp.argmin(errors, axis=-1).astype(jnp.int32)
  h, k = _shape(hyps)[-3:-1]
  hyps = jnp.broadcast_to(jnp.asarray(hyps, jnp.float32),
                          errors.shape[:-1] + (h, k, 3))
  return index, _take_hypothesis(hyps, index)


def oracle(hyps: Array, gt: Array,
           root: int | None = skeleton.ROOT) -> tuple[jax.Array, jax.Array]:
  """Picks the hypothesis closest to the ground truth (the paper's upper bound).

  Args:
    hyps: [..., H, K, 3] (mm).
    gt: [..., K, 3] (mm).
    root: joint aligned before comparing, as in `metrics.mpjpe`.

  Returns:
    (index [...] int32, pose [..., K, 3]) of the least MPJPE.
  """
  hs, gs = _shape(hyps), _shape(gt)
  if len(hs) < 3 or hs[-1] != 3:
    raise ValueError(f'hyps must have shape [..., H, K, 3], got {hs}')
  if len(gs) < 2 or gs[-2:] != hs[-2:]:
    raise ValueError(f'gt must have shape [..., {hs[-2]}, 3], got {gs}')
  try:
    batch = tuple(np.broadcast_shapes(hs[:-3], gs[:-2]))
  except ValueError:
    raise ValueError(f'leading dimensions of hyps {hs} and gt {gs} must '
                     'broadcast') from None
  hyps = jnp.broadcast_to(jnp.asarray(hyps, jnp.float32), batch + hs[-3:])
  gt = jnp.broadcast_to(jnp.asarray(gt, jnp.float32)[..., None, :, :],
                        batch + hs[-3:])
  errors = metrics.mpjpe(hyps, gt, root=root)
  index = jnp.argmin(errors, axis=-1).astype(jnp.int32)
  return index, _take_hypothesis(hyps, index)


def ensemble_mean(hyps: Array) -> jax.Array:
  """Joint-wise mean of the hypotheses (the paper's Ensemble baseline).

  Args:
    hyps: [..., H, K, 3].

  Returns:
    [..., K, 3].
  """
  hs = _shape(hyps)
  if len(hs) < 3 or hs[-1] != 3 or hs[-3] < 1:
    raise ValueError(f'hyps must have shape [..., H, K, 3] with H >= 1, got {hs}')
  return jnp.mean(jnp.asarray(hyps, jnp.float32), axis=-3)

