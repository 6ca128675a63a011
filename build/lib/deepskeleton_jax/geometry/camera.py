"""Camera geometry: pinhole projection, lens distortion, frames, crop affines.

Conventions (see docs/DESIGN.md): 3D points in millimetres in the camera frame
(x right, y down, z forward); 2D points in continuous pixels, where pixel
(row i, col j) covers [j, j+1) x [i, i+1). Intrinsics are stored as
(f_x, f_y, c_x, c_y).

Every function accepts NumPy or JAX arrays and returns the same kind, so the
dataset builders (NumPy, on the host) and the jitted steps share one
implementation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


def _xp(*arrays):
  """Returns jnp if any argument is a JAX array (or tracer), else np."""
  for a in arrays:
    if isinstance(a, jax.Array):
      return jnp
  return np


def _check_last_dim(name: str, x: Array, n: int) -> None:
  shape = tuple(np.shape(x))
  if not shape or shape[-1] != n:
    raise ValueError(f'{name} must have shape [..., {n}], got shape {shape}')


def _check_matrix(name: str, x: Array, rows: int, cols: int) -> None:
  shape = tuple(np.shape(x))
  if len(shape) < 2 or shape[-2:] != (rows, cols):
    raise ValueError(
        f'{name} must have shape [..., {rows}, {cols}], got shape {shape}')


def project(points: Array, focal: Array, center: Array) -> Array:
  """Pinhole projection without distortion.

  Args:
    points: [..., N, 3] camera-frame points (z > 0).
    focal: [..., 2] focal lengths (f_x, f_y) in pixels.
    center: [..., 2] principal point (c_x, c_y) in pixels.

  Returns:
    [..., N, 2] pixel coordinates.
  """
  _check_last_dim('points', points, 3)
  _check_last_dim('focal', focal, 2)
  _check_last_dim('center', center, 2)
  xy = points[..., :2] / points[..., 2:3]
  return xy * focal[..., None, :] + center[..., None, :]


def project_intrinsics(points: Array, intrinsics: Array) -> Array:
  """Pinhole projection with intrinsics packed as (f_x, f_y, c_x, c_y).

  Args:
    points: [..., N, 3] camera-frame points.
    intrinsics: [..., 4].

  Returns:
    [..., N, 2] pixel coordinates.
  """
  _check_last_dim('intrinsics', intrinsics, 4)
  return project(points, intrinsics[..., :2], intrinsics[..., 2:])


def project_distorted(points: Array, focal: Array, center: Array,
                      radial: Array, tangential: Array) -> Array:
  """Projection with Human3.6M's radial (k1..k3) and tangential (p1, p2) model.

  Uses VideoPose3D's `project_to_2d` formula: with normalised coordinates
  u = (x/z, y/z) and r2 = |u|^2,
  u' = u * (1 + k1 r2 + k2 r2^2 + k3 r2^3 + p.u) + p * r2.
  The Human3.6M code release (and 3d-pose-baseline's `cameras.h5`) writes the
  same model with its p = (a, b) as tan = a * y + b * x and offset
  (b, a) * r2; pass `tangential=p[..., ::-1]` for parameters in that order.

  Args:
    points: [..., N, 3] camera-frame points.
    focal: [..., 2]; center: [..., 2].
    radial: [..., 3] (k1, k2, k3).
    tangential: [..., 2] (p1, p2) in VideoPose3D's order (see above).

  Returns:
    [..., N, 2] pixel coordinates.
  """
  _check_last_dim('points', points, 3)
  _check_last_dim('focal', focal, 2)
  _check_last_dim('center', center, 2)
  _check_last_dim('radial', radial, 3)
  _check_last_dim('tangential', tangential, 2)
  xp = _xp(points, focal, center, radial, tangential)
  u = points[..., :2] / points[..., 2:3]
  r2 = xp.sum(u**2, axis=-1, keepdims=True)
  k = radial[..., None, :]
  p = tangential[..., None, :]
  radial_term = 1 + k[..., 0:1] * r2 + k[..., 1:2] * r2**2 + k[..., 2:3] * r2**3
  tan_term = xp.sum(p * u, axis=-1, keepdims=True)
  u = u * (radial_term + tan_term) + p * r2
  return u * focal[..., None, :] + center[..., None, :]


def world_to_camera(points: Array, rotation: Array, translation: Array) -> Array:
  """Maps world points to the camera frame: X_cam = R X_world + t.

  Human3.6M's metadata gives the camera centre C instead of t; use
  `translation = -R @ C` (see `translation_from_center`).

  Args:
    points: [..., N, 3] world points.
    rotation: [..., 3, 3] world-to-camera rotation.
    translation: [..., 3].

  Returns:
    [..., N, 3] camera-frame points.
  """
  _check_last_dim('points', points, 3)
  _check_matrix('rotation', rotation, 3, 3)
  _check_last_dim('translation', translation, 3)
  xp = _xp(points, rotation, translation)
  return xp.einsum('...ij,...nj->...ni', rotation, points) + translation[..., None, :]


def camera_to_world(points: Array, rotation: Array, translation: Array) -> Array:
  """Inverse of `world_to_camera`: X_world = R^T (X_cam - t)."""
  _check_last_dim('points', points, 3)
  _check_matrix('rotation', rotation, 3, 3)
  _check_last_dim('translation', translation, 3)
  xp = _xp(points, rotation, translation)
  return xp.einsum('...ji,...nj->...ni', rotation, points - translation[..., None, :])


def translation_from_center(rotation: Array, center: Array) -> Array:
  """t = -R C for a camera at world position C."""
  _check_matrix('rotation', rotation, 3, 3)
  _check_last_dim('center', center, 3)
  xp = _xp(rotation, center)
  return -xp.einsum('...ij,...j->...i', rotation, center)


# ----------------------------------------------------------------------------
# Crop affines. A crop affine is a [..., 2, 3] matrix A mapping original-image
# pixels p to crop pixels A[:, :2] p + A[:, 2].


def crop_affine(center: Array, box_size: Array, output_size: int,
                rotation_deg: Array = 0.0) -> Array:
  """Affine from an image to a square crop.

  The square box of side `box_size` centred at `center` (rotated by
  `rotation_deg` counter-clockwise about it) maps onto the
  `output_size x output_size` crop, its centre to (output_size / 2,
  output_size / 2).

  Args:
    center: [..., 2] box centre in image pixels.
    box_size: [...] box side in image pixels.
    output_size: crop side in pixels.
    rotation_deg: [...] in-plane rotation of the crop.

  Returns:
    [..., 2, 3] image-to-crop affine.
  """
  _check_last_dim('center', center, 2)
  xp = _xp(center, box_size, rotation_deg)
  box_size = xp.asarray(box_size, dtype=xp.float32)
  s = output_size / box_size
  theta = xp.deg2rad(xp.asarray(rotation_deg, dtype=xp.float32))
  cos = xp.cos(theta) * s
  sin = xp.sin(theta) * s
  cx, cy = center[..., 0], center[..., 1]
  cos, sin, cx, cy = xp.broadcast_arrays(cos, sin, cx, cy)
  half = output_size / 2.0
  # Rotation by -theta in image y-down coordinates shows the box rotated
  # counter-clockwise as upright.
  row0 = xp.stack([cos, -sin, half - cos * cx + sin * cy], axis=-1)
  row1 = xp.stack([sin, cos, half - sin * cx - cos * cy], axis=-1)
  return xp.stack([row0, row1], axis=-2).astype(xp.float32)


def apply_affine(points: Array, affine: Array) -> Array:
  """Applies [..., 2, 3] affines to [..., N, 2] points."""
  _check_last_dim('points', points, 2)
  _check_matrix('affine', affine, 2, 3)
  xp = _xp(points, affine)
  return xp.einsum('...ij,...nj->...ni', affine[..., :2], points) + affine[..., None, :, 2]


def invert_affine(affine: Array) -> Array:
  """Inverse of [..., 2, 3] affines."""
  _check_matrix('affine', affine, 2, 3)
  xp = _xp(affine)
  lin = affine[..., :2]
  inv = xp.linalg.inv(lin)
  t = -xp.einsum('...ij,...j->...i', inv, affine[..., 2])
  return xp.concatenate([inv, t[..., None]], axis=-1)


def compose_affine(outer: Array, inner: Array) -> Array:
  """Returns the affine of `outer(inner(p))`."""
  _check_matrix('outer', outer, 2, 3)
  _check_matrix('inner', inner, 2, 3)
  xp = _xp(outer, inner)
  lin = xp.einsum('...ij,...jk->...ik', outer[..., :2], inner[..., :2])
  t = xp.einsum('...ij,...j->...i', outer[..., :2], inner[..., 2]) + outer[..., 2]
  return xp.concatenate([lin, t[..., None]], axis=-1)


def affine_intrinsics(intrinsics: Array, affine: Array) -> Array:
  """Intrinsics of the image seen through an axis-aligned, unrotated affine.

  Args:
    intrinsics: [..., 4] (f_x, f_y, c_x, c_y) of the original image.
    affine: [..., 2, 3] original-to-new affine with no rotation or shear.

  Returns:
    [..., 4] intrinsics in the new image's pixels.
  """
  _check_last_dim('intrinsics', intrinsics, 4)
  _check_matrix('affine', affine, 2, 3)
  xp = _xp(intrinsics, affine)
  sx, sy = affine[..., 0, 0], affine[..., 1, 1]
  fx, fy = intrinsics[..., 0] * sx, intrinsics[..., 1] * sy
  cx = intrinsics[..., 2] * sx + affine[..., 0, 2]
  cy = intrinsics[..., 3] * sy + affine[..., 1, 2]
  return xp.stack([fx, fy, cx, cy], axis=-1)


def fit_scaled_orthographic(points_3d: Array, points_2d: Array,
                            weights: Array | None = None,
                            eps: float = 1e-8) -> tuple[Array, Array]:
  """Closed-form scaled-orthographic fit x ~= s * X[:, :2] + o.

  Minimises sum_k w_k |s X_k,xy + o - x_k|^2 over the scale s >= 0 and the
  offset o. The optimum centres both point sets at their weighted means, then
  s = max(0, sum w <X~, x~> / sum w |X~|^2): a camera cannot mirror the image,
  so a pose turned 180 degrees in the image plane (which a negative scale
  would fit perfectly) gets its true, large error.

  Args:
    points_3d: [..., K, 3] (only x and y are used).
    points_2d: [..., K, 2].
    weights: [..., K] non-negative (e.g. visibility); all ones if None.
    eps: guards against empty or degenerate sets.

  Returns:
    (scale [...], offset [..., 2]).
  """
  _check_last_dim('points_3d', points_3d, 3)
  _check_last_dim('points_2d', points_2d, 2)
  if points_3d.ndim < 2 or points_2d.ndim < 2 or (
      points_3d.shape[-2] != points_2d.shape[-2]):
    raise ValueError(
        'points_3d [..., K, 3] and points_2d [..., K, 2] must have the same K, '
        f'got shapes {tuple(points_3d.shape)} and {tuple(points_2d.shape)}')
  if weights is not None and (np.ndim(weights) < 1 or
                              np.shape(weights)[-1] != points_3d.shape[-2]):
    raise ValueError(f'weights must have shape [..., {points_3d.shape[-2]}], '
                     f'got shape {tuple(np.shape(weights))}')
  xp = _xp(points_3d, points_2d, weights)
  xy = points_3d[..., :2]
  if weights is None:
    weights = xp.ones(xy.shape[:-1], dtype=xy.dtype)
  w = weights[..., None].astype(xy.dtype)
  wsum = xp.maximum(xp.sum(w, axis=-2), eps)
  mean_3d = xp.sum(w * xy, axis=-2) / wsum
  mean_2d = xp.sum(w * points_2d, axis=-2) / wsum
  a = xy - mean_3d[..., None, :]
  b = points_2d - mean_2d[..., None, :]
  scale = xp.sum(w * a * b, axis=(-2, -1)) / xp.maximum(
      xp.sum(w * a * a, axis=(-2, -1)), eps)
  scale = xp.maximum(scale, 0.0)  # the constrained optimum (convex in s)
  offset = mean_2d - scale[..., None] * mean_3d
  return scale, offset
