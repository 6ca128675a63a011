"""Tests for inference/render_compare.py: map-consistency matching and refinement."""

import functools
import shutil

import jax
import numpy as np
import pytest

from deepskeleton_jax import errors
from deepskeleton_jax.evaluation import evaluate
from deepskeleton_jax.evaluation import scoring
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import matching
from deepskeleton_jax.inference import pipeline
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


def turned_bones(pose, rng, sigma):
  """`pose` with every bone direction turned at random, its lengths kept (root first)."""
  out, reached = np.zeros_like(pose), {skeleton.ROOT}
  out[skeleton.ROOT] = pose[skeleton.ROOT]
  while len(reached) < len(pose):
    for a, b in skeleton.BONES:
      if (a in reached) != (b in reached):
        parent, child = (a, b) if a in reached else (b, a)
        bone = pose[child] - pose[parent]
        length = np.linalg.norm(bone)
        turned = bone + rng.normal(0, sigma * length, 3)
        out[child] = out[parent] + turned * length / np.linalg.norm(turned)
        reached.add(child)
  return out


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
  start = turned_bones(POSE, np.random.default_rng(0), 0.25)
  settings = render_compare.Settings(steps=60, learning_rate=4.0, variables=variables,
                                     reprojection_weight=300.0)
  out = choose(start[None], settings, intrinsics=INTRINSICS)
  refined = np.asarray(out['pose'][0])
  np.testing.assert_array_equal(out['selected'][0], start)
  loss = lambda p: float(render_compare.refine_loss(
      p, start, predicted_maps(POSE, INTRINSICS), image_2d(POSE, INTRINSICS),
      np.ones(16, np.float32), INTRINSICS, GEOM, settings))
  assert loss(refined) < 0.8 * loss(start)
  # Toward the truth: in 3D, and most of the way in the image plane (depth is
  # what 2D cannot see; the maps only order the bones where they overlap).
  err = lambda p, axes=slice(0, 3): float(np.linalg.norm((p - POSE)[:, axes], axis=-1).mean())
  assert err(refined) < 0.9 * err(start), (err(refined), err(start))
  assert err(refined, slice(0, 2)) < 0.5 * err(start, slice(0, 2)), (
      err(refined, slice(0, 2)), err(start, slice(0, 2)))
  assert refined[7].tolist() == [0, 0, 0]  # still root-relative


def test_bad_settings_name_the_key():
  for key, value in (('matching.method', 'depth'), ('refine.steps', -1),
                     ('refine.variables', 'angles'), ('matching.temperature', -0.1)):
    config = config_lib.base_config()
    group, name = key.split('.')
    config[group][name] = value
    with pytest.raises(errors.ConfigError, match=f'config.{key}='):
      config_lib.finalize(config)


def test_eval_rows_and_the_pipeline_follow_the_config(tiny_pipeline, tmp_path):
  """The tiny pipeline: both rows in results.json and the report; predict/export's function refines."""
  workdir = tmp_path / 'workdir'
  shutil.copytree(tiny_pipeline.workdir, workdir)
  config = tiny_pipeline.config()
  config.matching.method = 'both'
  config.refine.steps = 2
  results = evaluate.evaluate(config, str(workdir))
  for table in ('mpjpe', 'pa_mpjpe'):
    assert {scoring.MAPS_ROW, scoring.REFINE_ROW} <= set(results[table]), results[table]
  report = (workdir / 'eval' / 'report.md').read_text()
  assert scoring.MAPS_ROW in report and scoring.REFINE_ROW in report
  assert results['render_compare']['matching'] == 'both'
  assert list((workdir / 'eval').glob('render_compare_*.png'))

  loaded = pipeline.load_stages(config, str(workdir), ('skeleton_net', 'regressor', 'hourglass'))
  variables = {k: v['variables'] for k, v in loaded.items()}
  norms = {k: v['norm'] for k, v in loaded.items()}
  images = np.random.default_rng(0).integers(0, 255, (2, 2, 32, 32, 3), np.uint8)
  out = jax.jit(pipeline.make_pipeline_fn(config, loaded))(variables, norms, images)
  want = render_compare.choose_and_refine(
      out['hyps'], out['maps'], out['joints_2d'], np.clip(out['confidence'], 0, None), None,
      render_compare.geometry(stages_lib.layout(config)), render_compare.settings(config))
  np.testing.assert_array_equal(out['chosen'], want['chosen'])
  np.testing.assert_allclose(out['pose'], want['pose'], atol=1e-3)
  chosen = np.asarray(out['hyps'])[np.arange(2), np.asarray(out['chosen'])]
  assert np.abs(np.asarray(out['pose']) - chosen).max() > 1e-3  # refined
