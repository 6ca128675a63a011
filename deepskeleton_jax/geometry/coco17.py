"""COCO's 17 keypoints mapped onto the project's 16 joints (`skeleton.JOINT_NAMES`).

2D keypoints from other tools (mmpose, RTMPose, converted OpenPose) come in
COCO's layout: nose, eyes, ears, shoulders, elbows, wrists, hips, knees,
ankles. The mapping, per joint of ours:

- ankles, knees, hips, wrists, elbows, shoulders: the COCO keypoint of the
  same name (exact up to the annotation conventions: COCO hips sit a little
  higher and wider than MPII's);
- pelvis: the midpoint of the two hips (exact for the synthetic body);
- thorax: the midpoint of the two shoulders (approximate: MPII's and the
  synthetic body's thorax sits slightly above the shoulder line, about 2%
  of the body height);
- upper neck and head top: approximate, from the head's centre `h`, the
  midpoint of the ears (or, when neither ear has a score, the score-weighted
  mean of the nose and eyes), along the line from the thorax `t`:
  upper_neck = t + 0.5 (h - t), head_top = t + 1.5 (h - t). The factors are
  average human proportions (ear level about 11.8% of the stature above the
  shoulders, the chin 6%, the vertex 18%). On 300 synthetic bodies seen
  from the front and the side (face points on the rendered head sphere) the
  median errors are 0.06 (upper neck), 0.16 (head top) and 0.16 (thorax) of
  the neck-to-head-top length (tests/coco17_test.py).

Scores: a joint taken from one keypoint keeps its score; a midpoint gets the
smaller of its two scores; upper neck and head top the smaller of the thorax'
score and the mean score of the face points used. A keypoint with score 0
(COCO's "not labelled") contributes nothing to a weighted mean; its
coordinates are kept as written.
"""

from __future__ import annotations

import numpy as np

from deepskeleton_jax.geometry import skeleton

COCO17_NAMES: tuple[str, ...] = (
    'nose', 'l_eye', 'r_eye', 'l_ear', 'r_ear', 'l_shoulder', 'r_shoulder', 'l_elbow',
    'r_elbow', 'l_wrist', 'r_wrist', 'l_hip', 'r_hip', 'l_knee', 'r_knee', 'l_ankle',
    'r_ankle')
NUM_COCO17: int = len(COCO17_NAMES)
_C = {name: i for i, name in enumerate(COCO17_NAMES)}
_J = skeleton.JOINT_INDEX

# Our joints that are one COCO keypoint of the same name.
DIRECT: dict[int, int] = {_J[n]: _C[n] for n in (
    'r_ankle', 'r_knee', 'r_hip', 'l_hip', 'l_knee', 'l_ankle', 'r_wrist', 'r_elbow',
    'r_shoulder', 'l_shoulder', 'l_elbow', 'l_wrist')}
UPPER_NECK_FACTOR = 0.5  # upper_neck = thorax + this x (head centre - thorax)
HEAD_TOP_FACTOR = 1.5    # head_top = thorax + this x (head centre - thorax)


def _weighted_mean(points: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Score-weighted mean of [..., n, 2] points, and the mean score [...]."""
  w = np.clip(scores, 0.0, None)
  total = w.sum(-1, keepdims=True)
  plain = points.mean(-2)
  mean = np.where(total > 0, (w[..., None] * points).sum(-2) / np.maximum(total, 1e-12),
                  plain)
  return mean, scores.mean(-1)


def to_skeleton(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Our 16 joints from COCO-17 keypoints (see the module docstring).

  Args:
    keypoints: [..., 17, 3] (x, y, score) in COCO's order.

  Returns:
    (joints_2d [..., 16, 2], scores [..., 16]) float32, in the same pixels.
  """
  keypoints = np.asarray(keypoints, np.float64)
  if keypoints.shape[-2:] != (NUM_COCO17, 3):
    raise ValueError(f'keypoints must have shape [..., 17, 3], got {keypoints.shape}')
  xy, score = keypoints[..., :2], keypoints[..., 2]
  joints = np.zeros(keypoints.shape[:-2] + (skeleton.NUM_JOINTS, 2))
  scores = np.zeros(keypoints.shape[:-2] + (skeleton.NUM_JOINTS,))
  for ours, coco in DIRECT.items():
    joints[..., ours, :], scores[..., ours] = xy[..., coco, :], score[..., coco]
  for ours, (a, b) in (('pelvis', ('l_hip', 'r_hip')),
                       ('thorax', ('l_shoulder', 'r_shoulder'))):
    joints[..., _J[ours], :] = (xy[..., _C[a], :] + xy[..., _C[b], :]) / 2
    scores[..., _J[ours]] = np.minimum(score[..., _C[a]], score[..., _C[b]])
  ears = [_C['l_ear'], _C['r_ear']]
  face = [_C['nose'], _C['l_eye'], _C['r_eye']]
  ear_centre, ear_score = _weighted_mean(xy[..., ears, :], score[..., ears])
  face_centre, face_score = _weighted_mean(xy[..., face, :], score[..., face])
  has_ears = (np.clip(score[..., ears], 0, None).sum(-1) > 0)[..., None]
  head = np.where(has_ears, ear_centre, face_centre)
  head_score = np.where(has_ears[..., 0], ear_score, face_score)
  thorax = joints[..., _J['thorax'], :]
  for name, factor in (('upper_neck', UPPER_NECK_FACTOR), ('head_top', HEAD_TOP_FACTOR)):
    joints[..., _J[name], :] = thorax + factor * (head - thorax)
    scores[..., _J[name]] = np.minimum(scores[..., _J['thorax']], head_score)
  return joints.astype(np.float32), scores.astype(np.float32)
