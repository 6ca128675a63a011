"""Tests of per-person tracks and the camera-space root (inference/people.py), no model."""

import math

import ml_collections
import numpy as np
import pytest

from deepskeleton_jax import errors
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import people

ROOT = skeleton.ROOT


@pytest.fixture(scope='module')
def clip(synthetic_video):
  return synthetic_video.render_clip(num_frames=6, seed=2)


def _found(clip, t, hyps=None, joints_2d=None, weights=None, person_id=0):
  truth = clip.joints_3d[t] - clip.joints_3d[t, ROOT]  # root-relative, camera axes
  hyps = np.stack([truth, truth * 0.6]) if hyps is None else hyps
  return people.Found(id=person_id, box=clip.boxes[t],
                      joints_2d=clip.joints_2d[t] if joints_2d is None else joints_2d,
                      confidence=np.ones(16, np.float32) if weights is None else weights,
                      hyps=hyps.astype(np.float32), chosen=0, pose=hyps[0])


def test_fit_on_true_pose_recovers_the_root(clip):
  """True 3D (root-relative) + its projection + the true intrinsics -> the true root."""
  found = [_found(clip, t) for t in range(len(clip.frames))]
  people.finish(found, clip.intrinsics[0], reselect=False)
  for t, f in enumerate(found):
    np.testing.assert_allclose(f.root_camera_mm, clip.joints_3d[t, ROOT], rtol=1e-3, atol=1.0)
  assert 3000 < clip.joints_3d[0, ROOT, 2] < 5000  # the clip's camera stands ~4 m away


def test_noisy_2d_and_weights(clip):
  """1 px noise: depth within 3%; a joint with weight 0 may be anywhere."""
  rng = np.random.default_rng(0)
  joints = clip.joints_2d[0] + rng.normal(0, 1.0, (16, 2))
  joints[9] = [1e4, -1e4]  # head top far off, weight 0
  weights = np.ones(16, np.float32)
  weights[9] = 0
  found = [_found(clip, 0, joints_2d=joints.astype(np.float32), weights=weights)]
  people.finish(found, clip.intrinsics[0], reselect=False)
  depth = clip.joints_3d[0, ROOT, 2]
  assert abs(found[0].root_camera_mm[2] - depth) < 0.03 * depth


def test_a_root_behind_the_camera_is_nan(clip):
  """-X projects like X: the pose reflected through the camera centre fits behind it."""
  truth = clip.joints_3d[0] - clip.joints_3d[0, ROOT]
  found = [_found(clip, 0), _found(clip, 0, hyps=np.stack([-truth, -truth]))]
  people.finish(found, clip.intrinsics[0], reselect=False)
  assert np.all(np.isfinite(found[0].root_camera_mm))
  assert np.all(np.isnan(found[1].root_camera_mm))


def test_reselect_picks_the_hypothesis_that_fits_the_2d(clip):
  truth = clip.joints_3d[0] - clip.joints_3d[0, ROOT]
  wrong = truth * np.array([-1.0, 1.0, 1.0])  # mirrored left-right
  found = [_found(clip, 0, hyps=np.stack([wrong, truth]))]
  people.finish(found, clip.intrinsics[0], reselect=True)
  assert found[0].chosen == 1
  np.testing.assert_allclose(found[0].root_camera_mm, clip.joints_3d[0, ROOT], rtol=1e-3)


def test_depth_scales_with_the_focal_length(clip):
  """Half the focal length: half the depth (exactly for a flat pose), same image point."""
  height, width = clip.frames.shape[1:3]
  cfg = ml_collections.ConfigDict({'intrinsics': '', 'fov_deg': 60.0})
  camera = people.intrinsics(cfg, height, width)
  f = (width / 2) / math.tan(math.radians(30))
  np.testing.assert_allclose(camera, [f, f, width / 2, height / 2], rtol=1e-6)
  truth = clip.joints_3d[0] - clip.joints_3d[0, ROOT]
  for pose, rel in ((truth, 0.1), (truth * [1, 1, 0], 1e-3)):
    roots = []
    for focal in (camera[0], camera[0] / 2):
      found = [_found(clip, 0, hyps=np.stack([pose, pose]))]
      people.finish(found, np.array([focal, focal, *clip.intrinsics[0, 2:]]), reselect=False)
      roots.append(found[0].root_camera_mm)
    assert roots[1][2] == pytest.approx(roots[0][2] / 2, rel=rel)
    np.testing.assert_allclose(roots[1][:2] / roots[1][2] * camera[0] / 2,
                               roots[0][:2] / roots[0][2] * camera[0], rtol=rel, atol=0.5)
  cfg.intrinsics = '500 510 128 96'
  np.testing.assert_allclose(people.intrinsics(cfg, height, width), [500, 510, 128, 96])
  for key, value in (('intrinsics', '500 0 1 1'), ('intrinsics', '1 2 3'),
                     ('fov_deg', 180.0)):
    bad = ml_collections.ConfigDict({'intrinsics': '', 'fov_deg': 60.0})
    bad[key] = value
    with pytest.raises(errors.ConfigError, match=f'config.predict.{key}'):
      people.intrinsics(bad, height, width)


def test_assemble_save_load_round_trip(clip, tmp_path):
  frames = [[_found(clip, 0, person_id=4)], [], [_found(clip, 2, person_id=4),
                                                 _found(clip, 2, person_id=1)]]
  for frame in frames:
    people.finish(frame, clip.intrinsics[0], reselect=False)
  tracks = people.assemble(frames, num_hyps=2, fps=12.5)
  assert list(tracks) == [1, 4]
  np.testing.assert_array_equal(tracks[4].present, [True, False, True])
  assert np.all(np.isnan(tracks[4].joints_3d[1])) and tracks[4].chosen[1] == -1
  cfg = ml_collections.ConfigDict({'smoothing': 'none'})
  people.smooth_people(tracks, cfg)
  assert people.frame_people(tracks, 1) == []
  entry = people.frame_people(tracks, 2)[1]
  assert entry['id'] == 4 and sorted(entry) == sorted(
      ['id', 'box', 'joints_2d', 'confidence', 'pose_3d', 'root_camera_mm', 'hypothesis',
       'hypotheses'])
  np.testing.assert_allclose(entry['root_camera_mm'], clip.joints_3d[2, ROOT], atol=1.0)
  people.save_npz(str(tmp_path / 'p.npz'), tracks, 3, 2, fps=np.float64(12.5))
  loaded = people.load_people(str(tmp_path / 'p.npz'))
  assert list(loaded) == [1, 4] and loaded[4].fps == 12.5
  for name in people.ARRAY_FIELDS:
    np.testing.assert_array_equal(getattr(loaded[4], name), getattr(tracks[4], name), name)
  people.save_npz(str(tmp_path / 'nobody.npz'), {}, 3, 2, fps=np.float64(12.5))
  assert people.load_people(str(tmp_path / 'nobody.npz')) == {}
