"""Tests of the COCO-17 -> 16-joint mapping (geometry/coco17.py) against known poses."""

import numpy as np
import pytest

from deepskeleton_jax.data import registry
from deepskeleton_jax.geometry import coco17
from deepskeleton_jax.geometry import skeleton

J = skeleton.JOINT_INDEX


def _keypoints(points: dict[str, tuple[float, float]], score: float = 0.9) -> np.ndarray:
  out = np.zeros((17, 3))
  for name, xy in points.items():
    out[coco17.COCO17_NAMES.index(name)] = (*xy, score)
  return out


# A person standing upright facing the camera (image y down), written by hand.
_STANDING = {
    'nose': (100, 40), 'l_eye': (104, 36), 'r_eye': (96, 36), 'l_ear': (110, 40),
    'r_ear': (90, 40), 'l_shoulder': (120, 70), 'r_shoulder': (80, 70),
    'l_elbow': (126, 100), 'r_elbow': (74, 100), 'l_wrist': (128, 128),
    'r_wrist': (72, 128), 'l_hip': (112, 140), 'r_hip': (88, 140), 'l_knee': (112, 185),
    'r_knee': (88, 185), 'l_ankle': (112, 228), 'r_ankle': (88, 228)}


def test_standing_pose_by_hand():
  joints, scores = coco17.to_skeleton(_keypoints(_STANDING))
  for name in ('l_ankle', 'r_knee', 'r_hip', 'l_wrist', 'r_elbow', 'l_shoulder'):
    np.testing.assert_allclose(joints[J[name]], _STANDING[name])
  np.testing.assert_allclose(joints[J['pelvis']], [100, 140])
  np.testing.assert_allclose(joints[J['thorax']], [100, 70])
  # Ear centre (100, 40), 30 px above the thorax: neck 15 px above, head top 45 px.
  np.testing.assert_allclose(joints[J['upper_neck']], [100, 55])
  np.testing.assert_allclose(joints[J['head_top']], [100, 25])
  np.testing.assert_allclose(scores, 0.9, rtol=1e-6)


def test_scores_and_missing_ears():
  kp = _keypoints(_STANDING)
  kp[coco17.COCO17_NAMES.index('l_hip'), 2] = 0.3
  kp[[3, 4], 2] = 0.0  # no ears (COCO: not labelled), coordinates at 0
  kp[[3, 4], :2] = 0.0
  joints, scores = coco17.to_skeleton(kp[None])  # a batch axis
  assert joints.shape == (1, 16, 2) and scores.shape == (1, 16)
  assert scores[0, J['pelvis']] == pytest.approx(0.3)
  assert scores[0, J['l_hip']] == pytest.approx(0.3)
  # Head centre from nose and eyes: (100, 37.33); ears at (0, 0) are ignored.
  head = np.array([100, (40 + 36 + 36) / 3])
  np.testing.assert_allclose(joints[0, J['head_top']], [100, 70 + 1.5 * (head[1] - 70)],
                             rtol=1e-5)
  with pytest.raises(ValueError, match=r'\[..., 17, 3\]'):
    coco17.to_skeleton(np.zeros((16, 3)))


def test_synthetic_bodies_head_and_thorax_error():
  """On 300 sampled synthetic people and poses, seen from the front and the side.

  The face points sit on the renderer's head sphere (synthetic_video.face_points).
  Measured (median, in neck-to-head-top lengths): thorax 0.16 (the shoulder
  drop, ~2% of the height), upper neck 0.06, head top 0.16.
  """
  sampler = registry.load_module('synthetic', 'pose_sampler')
  video = registry.load_module('synthetic', 'synthetic_video')
  rng = np.random.default_rng(0)
  errs = {name: [] for name in ('thorax', 'upper_neck', 'head_top')}
  for i in range(300):
    person = sampler.sample_person(rng)
    angles = sampler.sample_angles(rng, sampler.POSE_FAMILIES[i % len(sampler.POSE_FAMILIES)])
    joints, extras = sampler.forward_kinematics(person, angles)
    face = video.face_points(person, joints, extras)
    head_len = np.linalg.norm(joints[J['head_top']] - joints[J['upper_neck']])
    for axes in ((0, 1), (2, 1)):  # front and side views, orthographic
      kp = np.concatenate([video.coco17_2d(joints[:, axes], face[:, axes]),
                           np.ones((17, 1))], axis=1)
      mapped, _ = coco17.to_skeleton(kp)
      for ours in coco17.DIRECT:
        np.testing.assert_allclose(mapped[ours], joints[ours, axes], atol=1e-2)
      np.testing.assert_allclose(mapped[J['pelvis']], joints[J['pelvis'], axes], atol=1e-2)
      for name in errs:
        errs[name].append(np.linalg.norm(mapped[J[name]] - joints[J[name], axes]) / head_len)
  median = {k: float(np.median(v)) for k, v in errs.items()}
  print('median error / head length:', median)
  assert median['thorax'] < 0.25
  assert median['upper_neck'] < 0.12 and median['head_top'] < 0.25
  assert np.percentile(errs['head_top'], 90) < 0.6
