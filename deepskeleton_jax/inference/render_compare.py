"""Render and compare: choose and refine 3D hypotheses through the skeleton maps.

The paper matches hypotheses to 2D detections only (`matching.py`, Eq. 1),
which cannot see depth: a limb flipped towards or away from the camera
projects to the same 2D. The predicted foreground and background maps can:
they say which bone is in front where bones overlap. Here each hypothesis is

1. placed in the c = 1 crop with the camera fitted as matching fits it
   (perspective with known intrinsics, scaled orthographic otherwise),
2. rendered with the differentiable rasterizer (`soft_rasterize.py`) at every
   hypothesis' crop scale and stick width, in map pixels,
3. scored against the SkeletonMapNet's predicted maps of those hypotheses by
   the per-pixel, per-channel binary cross-entropy (the loss the network was
   trained with, so its outputs are per-channel Bernoulli probabilities and
   the cross-entropy is the negative log-likelihood of the rendered map: a
   pixel the network is sure of counts more than one it is unsure of, which
   an L1 on the colours would treat alike), averaged over pixels, channels
   and the hypotheses' maps.

Selection (`config.matching.method`): 'reprojection' (the paper's Eq. 1),
'maps' (least map score) or 'both' (least reprojection error in crop sides
squared, (px / S)^2, plus `maps_weight` x map score).

Refinement (`config.refine.steps` > 0): from the selected hypothesis, Adam
steps (jitted, vmapped over the batch) on the root-relative 3D joints, or on
the bone vectors with the hypothesis' bone lengths kept ('bones'), minimising
  refine.maps_weight x map score + refine.reprojection_weight x (px / S)^2
  + refine.bone_weight x mean relative squared bone-length change,
with the camera refitted at every step.

Everything is pure jnp and lives inside `pipeline.make_pipeline_fn`, so
evaluation, prediction on images and videos and the exported artifact all
choose and refine as the config says.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.geometry import soft_rasterize
from deepskeleton_jax.inference import matching

METHODS = ('reprojection', 'maps', 'both')
VARIABLES = ('joints', 'bones')
_PROB_EPS = 1e-4     # predicted map probabilities are clipped to [eps, 1 - eps]
_DEPTH_EPS = 1e-3    # mm: nearest depth a perspective projection divides by
_ADAM = (0.9, 0.999, 1e-8)


def _bone_tree() -> tuple[tuple[int, int, int], ...]:
  """(parent joint, child joint, bone) for every bone, parents first from the root."""
  order, reached = [], {skeleton.ROOT}
  while len(order) < skeleton.NUM_BONES:
    for k, (a, b) in enumerate(skeleton.BONES):
      if (a in reached) != (b in reached):
        parent, child = (a, b) if a in reached else (b, a)
        order.append((parent, child, k))
        reached.add(child)
  return tuple(order)


_TREE = _bone_tree()
_PARENTS = np.array([p for p, _, _ in _TREE])
_CHILDREN = np.array([c for _, c, _ in _TREE])


@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.matching` and `config.refine`, as render and compare uses them."""
  method: str = 'reprojection'
  maps_weight: float = 1.0
  temperature: float = 0.25
  depth_temperature: float = 10.0
  steps: int = 0
  learning_rate: float = 5.0
  variables: str = 'joints'
  refine_maps_weight: float = 1.0
  reprojection_weight: float = 100.0
  bone_weight: float = 10.0
  anchor_weight: float = 1.0

  @property
  def map_method(self) -> str:
    """The selection of the 'Ours w Mul-Hyp (maps)' row: maps or both."""
    return 'maps' if self.method == 'reprojection' else self.method

  @property
  def uses_maps(self) -> bool:
    return self.method != 'reprojection' or self.steps > 0


def settings(config: ml_collections.ConfigDict) -> Settings:
  """The `Settings` of a finalised config."""
  m, r = config.matching, config.refine
  return Settings(method=str(m.method), maps_weight=float(m.maps_weight),
                  temperature=float(m.temperature),
                  depth_temperature=float(m.depth_temperature), steps=int(r.steps),
                  learning_rate=float(r.learning_rate), variables=str(r.variables),
                  refine_maps_weight=float(r.maps_weight),
                  reprojection_weight=float(r.reprojection_weight),
                  bone_weight=float(r.bone_weight), anchor_weight=float(r.anchor_weight))


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Where each hypothesis' maps are: crop scales, stick widths, sizes.

  Attributes:
    input_size: S, the crop side in pixels (2D is in pixels of the c = 1 crop).
    map_size: side of the skeleton maps.
    crop_scales: [G] crop scale of each hypothesis' maps.
    widths: [G] stick width of each hypothesis' maps, in map pixels.
  """
  input_size: int
  map_size: int
  crop_scales: tuple[float, ...]
  widths: tuple[float, ...]


def geometry(lay: Any) -> Geometry:
  """The `Geometry` of a `stages.Layout`."""
  return Geometry(input_size=lay.input_size, map_size=lay.map_size,
                  crop_scales=tuple(float(c) for c, _ in lay.hypotheses),
                  widths=tuple(float(w) * lay.map_size / 224 for _, w in lay.hypotheses))


def project_fitted(pose: jax.Array, joints_2d: jax.Array, weights: jax.Array,
                   intrinsics: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """One root-relative pose placed in the c = 1 crop by the camera matching fits.

  Args:
    pose: [K, 3] (mm, root-relative).
    joints_2d: [K, 2] detections (pixels of the c = 1 crop).
    weights: [K] their weights.
    intrinsics: [4] or None (scaled orthographic).

  Returns:
    (2D [K, 2] pixels, depth [K]: camera-frame z, or the pose's z).
  """
  if intrinsics is None:
    scale, offset = camera.fit_scaled_orthographic(pose, joints_2d, weights)
    return scale * pose[:, :2] + offset, pose[:, 2]
  t = matching.fit_root_translation(pose[None], joints_2d, weights, intrinsics)[0]
  points = pose + t
  z = jnp.where(jnp.abs(points[:, 2]) < _DEPTH_EPS, _DEPTH_EPS, points[:, 2])
  return points[:, :2] / z[:, None] * intrinsics[:2] + intrinsics[2:], points[:, 2]


def render_pose(pose: jax.Array, joints_2d: jax.Array, weights: jax.Array,
                intrinsics: jax.Array | None, geom: Geometry, s: Settings) -> jax.Array:
  """Soft maps [G, m, m, 6] of one pose at every hypothesis' crop and stick width."""
  xy, depth = project_fitted(pose, joints_2d, weights, intrinsics)
  half = geom.input_size / 2
  scales = jnp.asarray(geom.crop_scales)[:, None, None]
  in_map = ((xy - half) / scales + half) * (geom.map_size / geom.input_size)
  g = len(geom.crop_scales)
  return soft_rasterize.soft_render_targets(
      in_map, jnp.broadcast_to(depth, (g,) + depth.shape), None, jnp.asarray(geom.widths),
      geom.map_size, temperature=s.temperature, depth_temperature=s.depth_temperature)


def map_loss(rendered: jax.Array, predicted: jax.Array) -> jax.Array:
  """Binary cross-entropy of predicted probabilities against rendered maps.

  Args:
    rendered: [..., m, m, C] in [0, 1].
    predicted: [..., m, m, C] probabilities (the SkeletonMapNet's sigmoid).

  Returns:
    [...] the mean over pixels and channels (nats).
  """
  p = jnp.clip(predicted, _PROB_EPS, 1.0 - _PROB_EPS)
  nll = -(rendered * jnp.log(p) + (1.0 - rendered) * jnp.log1p(-p))
  return jnp.mean(nll, axis=(-3, -2, -1))


def _reprojection(pose, joints_2d, weights, intrinsics, geom):
  """Weighted mean squared 2D error of the fitted projection, in crop sides^2."""
  err = matching.reprojection_error(pose[None], joints_2d, weights, intrinsics)[0]
  return err / geom.input_size**2


def _scores_one(hyps, maps, joints_2d, weights, intrinsics, geom, s):
  """Reprojection [H] and map [H] scores of one example's hypotheses."""
  reproj = matching.reprojection_error(hyps, joints_2d, weights, intrinsics)
  def one(pose):
    rendered = render_pose(pose, joints_2d, weights, intrinsics, geom, s)
    return jnp.mean(map_loss(rendered, maps))
  return reproj / geom.input_size**2, jax.lax.map(one, hyps)


def combined_score(reprojection: jax.Array, maps: jax.Array, method: str,
                   maps_weight: float) -> jax.Array:
  """The score `method` selects by (least is best), [..., H]."""
  if method == 'reprojection':
    return reprojection
  if method == 'maps':
    return maps
  return reprojection + maps_weight * maps


def _is_zero(weight: Any) -> bool:
  return isinstance(weight, (int, float)) and weight == 0


def _bone_vectors(pose):
  return pose[_CHILDREN] - pose[_PARENTS]


def _from_bones(vectors, lengths):
  """Root-relative joints [K, 3] from bone vectors [15, 3] rescaled to `lengths`."""
  norm = jnp.sqrt(jnp.sum(vectors**2, axis=-1, keepdims=True) + 1e-12)
  vectors = vectors / norm * lengths[:, None]
  joints = [None] * skeleton.NUM_JOINTS
  joints[skeleton.ROOT] = jnp.zeros(3, vectors.dtype)
  for i, (parent, child, _) in enumerate(_TREE):
    joints[child] = joints[parent] + vectors[i]
  return jnp.stack(joints)


def refine_loss(pose, pose0, maps, joints_2d, weights, intrinsics, geom, s):
  """The refinement objective of one root-relative pose [K, 3] (scalar)."""
  maps_term = 0.0
  if not _is_zero(s.refine_maps_weight):  # No render for a weight of 0.
    rendered = render_pose(pose, joints_2d, weights, intrinsics, geom, s)
    maps_term = s.refine_maps_weight * jnp.mean(map_loss(rendered, maps))
  lengths0 = jnp.linalg.norm(_bone_vectors(pose0), axis=-1)
  lengths = jnp.sqrt(jnp.sum(_bone_vectors(pose)**2, axis=-1) + 1e-12)
  bone = jnp.mean(((lengths - lengths0) / jnp.maximum(lengths0, 1.0))**2)
  scale2 = jnp.maximum(jnp.mean(lengths0), 1.0)**2
  anchor = jnp.mean(jnp.sum((pose - pose0)**2, axis=-1)) / scale2
  return (maps_term + s.reprojection_weight * _reprojection(pose, joints_2d, weights, intrinsics, geom)
          + s.bone_weight * bone + s.anchor_weight * anchor)


def _refine_one(pose0, maps, joints_2d, weights, intrinsics, geom, s):
  """`s.steps` Adam steps from one pose [K, 3]; returns the refined pose."""
  lengths0 = jnp.linalg.norm(_bone_vectors(pose0), axis=-1)
  if s.variables == 'bones':
    to_pose = lambda x: _from_bones(x, lengths0)
    x0 = _bone_vectors(pose0)
  else:
    to_pose = lambda x: x - x[skeleton.ROOT]
    x0 = pose0
  objective = lambda x: refine_loss(to_pose(x), pose0, maps, joints_2d, weights,
                                    intrinsics, geom, s)
  b1, b2, eps = _ADAM

  def step(i, state):
    x, m, v = state
    g = jax.grad(objective)(x)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    t = (i + 1).astype(x.dtype)
    update = (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)
    return x - s.learning_rate * update, m, v

  zeros = jnp.zeros_like(x0)
  x = jax.lax.fori_loop(0, s.steps, step, (x0, zeros, zeros))[0]
  return to_pose(x)


def choose_and_refine(hyps: jax.Array, maps: jax.Array, joints_2d: jax.Array,
                      weights: jax.Array, intrinsics: jax.Array | None, geom: Geometry,
                      s: Settings, map_row: bool = False) -> dict[str, jax.Array]:
  """Selects among the hypotheses by `s.method` and refines (jittable).

  Args:
    hyps: [b, H, K, 3] root-relative hypotheses (mm).
    maps: [b, G, m, m, 6] the SkeletonMapNet's maps (G = H: one per hypothesis).
    joints_2d: [b, K, 2] detections in pixels of the c = 1 crop.
    weights: [b, K] their non-negative weights.
    intrinsics: [b, 4] of the c = 1 crop, or None (scaled orthographic).
    geom: the maps' geometry.
    s: the settings.
    map_row: also score the maps when `s` does not need them (evaluation's
      'Ours w Mul-Hyp (maps)' row).

  Returns:
    `chosen` [b] int32 and `pose` [b, K, 3]: the selection by `s.method`
    refined by `s.steps` steps (unrefined when 0); `selected` [b, K, 3] the
    selection unrefined; `map_chosen` [b] the selection by `s.map_method`;
    `reprojection_score` and `map_score` [b, H] (map score NaN when
    neither `s.uses_maps` nor `map_row`: not computed).
  """
  intr_axis = None if intrinsics is None else 0
  if s.uses_maps or map_row:
    scores = jax.vmap(functools.partial(_scores_one, geom=geom, s=s),
                      in_axes=(0, 0, 0, 0, intr_axis))
    reproj, map_score = scores(hyps, maps, joints_2d, weights, intrinsics)
  else:
    reproj = matching.reprojection_error(hyps, joints_2d, weights, intrinsics)
    reproj = reproj / geom.input_size**2
    map_score = jnp.full_like(reproj, jnp.nan)
  chosen = jnp.argmin(combined_score(reproj, map_score, s.method, s.maps_weight), axis=-1)
  map_chosen = jnp.argmin(combined_score(reproj, map_score, s.map_method, s.maps_weight),
                          axis=-1)
  selected = jnp.take_along_axis(hyps, chosen[:, None, None, None], axis=1)[:, 0]
  pose = selected
  if s.steps > 0:
    refine = jax.vmap(functools.partial(_refine_one, geom=geom, s=s),
                      in_axes=(0, 0, 0, 0, intr_axis))
    pose = refine(selected, maps, joints_2d, weights, intrinsics)
  return {'chosen': chosen.astype(jnp.int32), 'pose': pose, 'selected': selected,
          'map_chosen': map_chosen.astype(jnp.int32), 'reprojection_score': reproj,
          'map_score': map_score}
