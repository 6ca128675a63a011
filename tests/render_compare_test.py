"""Tests for inference/render_compare.py: map-consistency matching and refinement."""

import functools

import jax
import numpy as np
import pytest

from deepskeleton_jax import errors
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.inference import matching
from deepskeleton_jax.inference import render_compare

# A person facing the camera (x right, y down, z away; mm, thorax at the
# origin) whose right forearm crosses in front of the spine.
POSE = np.array([
    [-100, 1250, 0], [-100, 850, 0], [-100, 450, 0], [100, 450, 0], [100, 850, 0],
    [100, 1250, 0], [0, 450, 0], [0, 0, 0], [0, -100, 0], [0, -300, 0],
    [150, 350, -250], [-250, 300, 0], [-180, 0, 0], [180, 0, 0], [250, 300, 0],
    [300, 600, 0]], np.float32)
GEOM = render_compare.Geometry(input_size=128, map_size=32, crop_scales=(1.0, 1.25),
                               widths=(3.0, 4.5))


def flipped_forearm(pose):
  """The right wrist mirrored in depth about the elbow: the same 2D, behind the spine."""
  out = pose.copy()
  out[10, 2] = 2 * pose[11, 2] - pose[10, 2]
  return out


# A camera 5 m away whose crop the person fills (Tables' perspective case).
INTRINSICS = np.array([330.0, 330.0, 64.0, 33.0], np.float32)
DISTANCE = np.array([0, 0, 5000], np.float32)


def image_2d(pose, intrinsics=None):
  """Projection into the 128-px c = 1 crop: scaled orthographic, or perspective."""
  if intrinsics is None:
    return (pose[:, :2] - [0, 475]) * (100 / 1550) + 64
  points = pose + DISTANCE
  return points[:, :2] / points[:, 2:] * intrinsics[:2] + intrinsics[2:]


def predicted_maps(pose, intrinsics=None):
  """What a confident SkeletonMapNet would predict: the exact maps of `pose`."""
  maps = []
  for scale, width in zip(GEOM.crop_scales, GEOM.widths):
    in_map = ((image_2d(pose, intrinsics) - 64) / scale + 64) * (GEOM.map_size / 128)
    maps.append(rasterize.render_targets(in_map, pose[:, 2], None, width, GEOM.map_size))
  return 0.02 + 0.96 * np.stack(maps)


def choose(hyps, settings, map_row=False, intrinsics=None):
  fn = jax.jit(functools.partial(render_compare.choose_and_refine, geom=GEOM, s=settings,
                                 map_row=map_row))
  weights = np.ones((1, 16), np.float32)
  return fn(hyps[None], predicted_maps(POSE, intrinsics)[None],
            image_2d(POSE, intrinsics)[None], weights,
            None if intrinsics is None else intrinsics[None])


def test_maps_pick_the_depth_order_reprojection_cannot_see():
  flip = flipped_forearm(POSE)
  assert np.abs(predicted_maps(flip) - predicted_maps(POSE)).max() > 0.5  # maps differ
  for hyps, truth in ((np.stack([flip, POSE]), 1), (np.stack([POSE, flip]), 0)):
    reproj = matching.reprojection_error(hyps, image_2d(POSE), None)
    np.testing.assert_allclose(reproj[0], reproj[1], atol=1e-6)  # same 2D: a tie
    for method in ('maps', 'both'):
      out = choose(hyps, render_compare.Settings(method=method))
      assert int(out['chosen'][0]) == truth, method
      np.testing.assert_array_equal(out['pose'][0], hyps[truth])
    out = choose(hyps, render_compare.Settings(method='reprojection'), map_row=True)
    assert int(out['chosen'][0]) == 0 and int(out['map_chosen'][0]) == truth
    out = choose(hyps, render_compare.Settings(method='reprojection'))
    assert np.isnan(out['map_score']).all()  # not computed: the paper's matching only


@pytest.mark.parametrize('variables', ['joints', 'bones'])
def test_refinement_lowers_the_loss_and_moves_toward_the_truth(variables):
  rng = np.random.default_rng(0)
  start = POSE + rng.normal(0, 40, POSE.shape).astype(np.float32)
  start -= start[7]
  settings = render_compare.Settings(steps=60, learning_rate=4.0, variables=variables,
                                     reprojection_weight=300.0)
  out = choose(start[None], settings, intrinsics=INTRINSICS)
  refined = np.asarray(out['pose'][0])
  np.testing.assert_array_equal(out['selected'][0], start)
  loss = lambda p: float(render_compare.refine_loss(
      p, start, predicted_maps(POSE, INTRINSICS), image_2d(POSE, INTRINSICS),
      np.ones(16, np.float32), INTRINSICS, GEOM, settings))
  assert loss(refined) < 0.8 * loss(start)
  err = lambda p: float(np.linalg.norm(p - POSE, axis=-1).mean())
  assert err(refined) < 0.8 * err(start), (err(refined), err(start))
  assert refined[7].tolist() == [0, 0, 0]  # still root-relative


def test_bad_settings_name_the_key():
  for key, value in (('matching.method', 'depth'), ('refine.steps', -1),
                     ('refine.variables', 'angles'), ('matching.temperature', -0.1)):
    config = config_lib.base_config()
    group, name = key.split('.')
    config[group][name] = value
    with pytest.raises(errors.ConfigError, match=f'config.{key}='):
      config_lib.finalize(config)
