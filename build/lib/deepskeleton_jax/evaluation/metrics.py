"""Pose metrics: MPJPE, PA-MPJPE, PCKh, and Human3.6M's action columns.

3D metrics are pure `jax.numpy` (jit- and vmap-able, NumPy inputs accepted);
PCKh runs on the host in NumPy. The Markdown tables are in `tables.py`.

PCKh follows the official MPII evaluation (`evalPCKh.m` and its Python port
used by the stacked-hourglass code releases): a joint is correct when its
distance to the ground truth is strictly below `threshold x head_size`, with
head_size = 0.6 x the head-box diagonal; each joint's score is taken over the
instances where it is visible; the total ('Mean') pools all visible joints
except pelvis and thorax; the table's 'Head' is the head top alone and the other
groups average left and right. With these rules and the predictions compared
with `pos_gt_src` of `gt_valid_tompson_format.mat` as stored (no pixel shift;
both are in the .mat's 1-based MATLAB frame), `bearpaw-hg_s8_b1.mat` scores
the published Head 96.79, Sho. 95.19, Elb. 90.08, Wri. 85.32, Hip 87.48,
Knee 84.26, Ank. 80.73 (and Mean 89.09); shifting the predictions by one pixel
moves these by up to 0.4. PCKh only needs both inputs in one frame: to compare
predictions in the project's continuous pixels (docs/DESIGN.md) with MATLAB-frame
ground truth, add 0.5 to them (the centre of pixel j is j + 0.5 here, j + 1
in MATLAB).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from deepskeleton_jax.geometry import skeleton

Array = Any

# The 15 Human3.6M actions in the column order of the paper's Tables 1 and 6.
H36M_ACTIONS: tuple[str, ...] = (
    'Direction', 'Discuss', 'Eat', 'Greet', 'Phone', 'Pose', 'Purchase', 'Sit',
    'SitDown', 'Smoke', 'Photo', 'Wait', 'Walk', 'WalkDog', 'WalkTogether')

# Spellings of the Human3.6M releases and papers (lower case, letters only).
_H36M_ALIASES: dict[str, str] = {
    'direction': 'Direction', 'directions': 'Direction',
    'discuss': 'Discuss', 'discussion': 'Discuss',
    'eat': 'Eat', 'eating': 'Eat',
    'greet': 'Greet', 'greeting': 'Greet',
    'phone': 'Phone', 'phoning': 'Phone',
    'pose': 'Pose', 'posing': 'Pose',
    'purchase': 'Purchase', 'purchases': 'Purchase',
    'sit': 'Sit', 'sitting': 'Sit',
    'sitdown': 'SitDown', 'sittingdown': 'SitDown',
    'smoke': 'Smoke', 'smoking': 'Smoke',
    'photo': 'Photo', 'takingphoto': 'Photo',
    'wait': 'Wait', 'waiting': 'Wait',
    'walk': 'Walk', 'walking': 'Walk',
    'walkdog': 'WalkDog', 'walkingdog': 'WalkDog',
    'walktogether': 'WalkTogether', 'walkingtogether': 'WalkTogether',
    'walkpair': 'WalkTogether',
}

# Columns of the paper's MPII tables (Tables 8-10).
PCKH_COLUMNS: tuple[str, ...] = tuple(skeleton.MPII_JOINT_GROUPS) + ('Mean',)

# Joints left out of the official PCKh total.
_PCKH_EXCLUDED = (skeleton.JOINT_INDEX['pelvis'], skeleton.JOINT_INDEX['thorax'])

# The official evaluation's normaliser: head size = SC_BIAS x box diagonal.
SC_BIAS = 0.6


# ----------------------------------------------------------------------------
# Shape checks.


def _shape(x: Array) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _check_joints(name: str, x: Array, dims: int,
                  num_joints: int | None = None) -> None:
  shape = _shape(x)
  k = 'K' if num_joints is None else str(num_joints)
  if (len(shape) < 2 or shape[-1] != dims or
      (num_joints is not None and shape[-2] != num_joints)):
    raise ValueError(f'{name} must have shape [..., {k}, {dims}], got {shape}')


def _check_same(name_a: str, a: Array, name_b: str, b: Array) -> None:
  if _shape(a) != _shape(b):
    raise ValueError(f'{name_a} and {name_b} must have the same shape, got '
                     f'{_shape(a)} and {_shape(b)}')


# ----------------------------------------------------------------------------
# 3D errors.


def mpjpe(pred: Array, gt: Array, root: int | None = skeleton.ROOT) -> jnp.ndarray:
  """Mean per-joint position error after aligning each pose's root joint.

  Args:
    pred: [..., K, 3] predicted joints (mm).
    gt: [..., K, 3] ground-truth joints (mm).
    root: joint subtracted from each pose before comparing (the thorax by
      default, the paper's protocol); None compares the poses as given.

  Returns:
    [...] mean Euclidean joint distance per pose.
  """
  _check_joints('pred', pred, 3)
  _check_same('pred', pred, 'gt', gt)
  pred = jnp.asarray(pred, jnp.float32)
  gt = jnp.asarray(gt, jnp.float32)
  if root is not None:
    if not -pred.shape[-2] <= root < pred.shape[-2]:
      raise ValueError(f'root must index one of {pred.shape[-2]} joints, '
                       f'got {root}')
    pred = pred - pred[..., root, None, :]
    gt = gt - gt[..., root, None, :]
  return jnp.mean(jnp.linalg.norm(pred - gt, axis=-1), axis=-1)


def procrustes_align(pred: Array, gt: Array) -> jnp.ndarray:
  """Similarity transform of `pred` that best matches `gt` (least squares).

  Finds scale s, proper rotation R (det +1) and translation t minimising
  sum_k |s R p_k + t - g_k|^2 (Umeyama's closed form) for each pose.

  Args:
    pred: [..., K, 3].
    gt: [..., K, 3].

  Returns:
    [..., K, 3] the aligned prediction s R p + t.
  """
  _check_joints('pred', pred, 3)
  _check_same('pred', pred, 'gt', gt)
  pred = jnp.asarray(pred, jnp.float32)
  gt = jnp.asarray(gt, jnp.float32)
  mu_p = jnp.mean(pred, axis=-2, keepdims=True)
  mu_g = jnp.mean(gt, axis=-2, keepdims=True)
  p0, g0 = pred - mu_p, gt - mu_g
  # Cross-covariance M = G0^T P0 = U S V^T; R = U D V^T, D fixes det(R) = +1.
  m = jnp.einsum('...ki,...kj->...ij', g0, p0)
  u, s, vt = jnp.linalg.svd(m)
  sign = jnp.sign(jnp.linalg.det(jnp.einsum('...ij,...jk->...ik', u, vt)))
  sign = jnp.where(sign == 0, 1.0, sign)
  d = jnp.stack([jnp.ones_like(sign), jnp.ones_like(sign), sign], axis=-1)
  rot = jnp.einsum('...ij,...j,...jk->...ik', u, d, vt)
  var_p = jnp.sum(p0**2, axis=(-2, -1))
  scale = jnp.sum(s * d, axis=-1) / jnp.maximum(var_p, 1e-12)
  return scale[..., None, None] * jnp.einsum('...ij,...kj->...ki', rot, p0) + mu_g


def pa_mpjpe(pred: Array, gt: Array) -> jnp.ndarray:
  """MPJPE after a per-pose similarity Procrustes alignment (Protocol 2).

  Args:
    pred: [..., K, 3] (mm).
    gt: [..., K, 3] (mm).

  Returns:
    [...] mean joint distance between `procrustes_align(pred, gt)` and `gt`.
  """
  aligned = procrustes_align(pred, gt)
  return mpjpe(aligned, gt, root=None)


# ----------------------------------------------------------------------------
# PCKh (MPII).


def mpii_head_size(head_boxes: Array) -> np.ndarray:
  """PCKh normaliser: 0.6 x the head-box diagonal.

  Args:
    head_boxes: [..., 2, 2] two opposite corners [..., corner, (x, y)].

  Returns:
    [...] head sizes in the boxes' pixels.
  """
  shape = _shape(head_boxes)
  if len(shape) < 2 or shape[-2:] != (2, 2):
    raise ValueError(f'head_boxes must have shape [..., 2, 2], got {shape}')
  boxes = np.asarray(head_boxes, np.float64)
  return SC_BIAS * np.linalg.norm(boxes[..., 1, :] - boxes[..., 0, :], axis=-1)


def pckh(pred: Array, gt: Array, head_size: Array, visible: Array,
         threshold: float = 0.5) -> dict[str, Any]:
  """PCKh with the official MPII rules (see the module docstring).

  Args:
    pred: [..., 16, 2] predicted joints (pixels, same frame as `gt`).
    gt: [..., 16, 2] ground-truth joints.
    head_size: [...] normaliser per person (`mpii_head_size`).
    visible: [..., 16] bool, the joints annotated (MPII's `1 - jnt_missing`).
    threshold: fraction of the head size (0.5 for PCKh@0.5).

  Returns:
    dict with 'per_joint' (16,) float64 percent (NaN for a joint never
    visible), 'count' (16,) visible instances per joint, 'mean' the official
    total over visible joints except pelvis and thorax (percent; the MPII
    toolkit's and bearpaw's evaluation's total), 'mean_joints' the unweighted
    mean of those 14 joints' values (the 'Mean' of bearpaw's published table
    and several papers), 'persons' the number of persons scored, and 'groups'
    {Head, Sho., Elb., Wri., Hip, Knee, Ank., Mean} as in the paper's tables.
    Persons without a head size (<= 0 or not finite) are left out, not
    counted as misses.
  """
  return pckh_from_counts(*pckh_counts(pred, gt, head_size, visible, threshold))


def pckh_counts(pred: Array, gt: Array, head_size: Array, visible: Array,
                threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
  """The sums behind `pckh`, to accumulate over batches.

  Args:
    pred, gt, head_size, visible, threshold: as for `pckh`.

  Returns:
    (hits [16] int, count [16] int, persons int): per joint the visible
    instances within the threshold and all visible instances, of the persons
    with a head size; add them up over batches and pass to `pckh_from_counts`.
  """
  k = skeleton.NUM_JOINTS
  _check_joints('pred', pred, 2, k)
  _check_same('pred', pred, 'gt', gt)
  lead = _shape(pred)[:-2]
  if _shape(head_size) != lead:
    raise ValueError(f'head_size must have shape {lead}, got {_shape(head_size)}')
  if _shape(visible) != lead + (k,):
    raise ValueError(
        f'visible must have shape {lead + (k,)}, got {_shape(visible)}')
  pred = np.asarray(pred, np.float64).reshape(-1, k, 2)
  gt = np.asarray(gt, np.float64).reshape(-1, k, 2)
  head_size = np.asarray(head_size, np.float64).reshape(-1, 1)
  scored = np.isfinite(head_size[:, 0]) & (head_size[:, 0] > 0)
  visible = np.asarray(visible).astype(bool).reshape(-1, k) & scored[:, None]
  with np.errstate(invalid='ignore', divide='ignore'):
    dist = np.linalg.norm(pred - gt, axis=-1) / head_size
  correct = (dist < threshold) & visible
  return correct.sum(axis=0), visible.sum(axis=0), int(scored.sum())


def pckh_from_counts(hits: Array, count: Array, persons: int) -> dict[str, Any]:
  """The `pckh` result from (summed) `pckh_counts`."""
  hits = np.asarray(hits, np.int64)
  count = np.asarray(count, np.int64)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_joint = 100.0 * hits / count
  keep = np.ones(skeleton.NUM_JOINTS, bool)
  keep[list(_PCKH_EXCLUDED)] = False
  total = count[keep].sum()
  mean = 100.0 * hits[keep].sum() / total if total else math.nan
  scored = keep & (count > 0)
  mean_joints = float(np.mean(per_joint[scored])) if scored.any() else math.nan
  result = {'per_joint': per_joint, 'count': count, 'mean': float(mean),
            'mean_joints': mean_joints, 'persons': int(persons)}
  result['groups'] = pckh_groups(result)
  return result


def pckh_groups(result: Mapping[str, Any]) -> dict[str, float]:
  """Per-group PCKh of the paper's tables from a `pckh` result.

  Args:
    result: a dict with 'per_joint' (16,) and 'mean'.

  Returns:
    {Head, Sho., Elb., Wri., Hip, Knee, Ank., Mean}: each group the mean of its
    joints' scores (`skeleton.MPII_JOINT_GROUPS`), Mean the official total.
  """
  if 'per_joint' not in result or 'mean' not in result:
    raise ValueError("result must be a pckh() dict with 'per_joint' and 'mean', "
                     f'got keys {sorted(result)}')
  per_joint = np.asarray(result['per_joint'], np.float64)
  if per_joint.shape != (skeleton.NUM_JOINTS,):
    raise ValueError(f"result['per_joint'] must have shape "
                     f'({skeleton.NUM_JOINTS},), got {per_joint.shape}')
  groups = {name: float(np.mean(per_joint[list(idx)]))
            for name, idx in skeleton.MPII_JOINT_GROUPS.items()}
  groups['Mean'] = float(result['mean'])
  return groups


def load_mpii_eval_gt(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the official MPII evaluation annotations (e.g. `gt_valid.mat`).

  Args:
    path: a .mat with `pos_gt_src` (16, 2, N), `jnt_missing` (16, N) and
      `headboxes_src` (2, 2, N), in MATLAB's 1-based pixel frame.

  Returns:
    dict with 'joints' [N, 16, 2] (as stored, 1-based), 'visible' [N, 16] bool,
    'head_boxes' [N, 2, 2] and 'head_size' [N].
  """
  import scipy.io  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such MPII evaluation file')
  mat = scipy.io.loadmat(path)
  expected = {'pos_gt_src': (16, 2), 'jnt_missing': (16,),
              'headboxes_src': (2, 2)}
  for field, lead in expected.items():
    if field not in mat or mat[field].shape[:-1] != lead:
      got = mat[field].shape if field in mat else 'missing'
      raise ValueError(f'{path}: field {field} must have shape {lead + ("N",)}, '
                       f'got {got}')
  boxes = np.transpose(mat['headboxes_src'], (2, 0, 1)).astype(np.float64)
  return {
      'joints': np.transpose(mat['pos_gt_src'], (2, 0, 1)).astype(np.float64),
      'visible': np.asarray(mat['jnt_missing']).T == 0,
      'head_boxes': boxes,
      'head_size': mpii_head_size(boxes),
  }


# ----------------------------------------------------------------------------
# Human3.6M actions.


def h36m_action_column(action: str) -> str:
  """Maps a raw Human3.6M action string to its column in the paper's tables.

  Accepts the release's spellings with or without a take suffix or camera id
  ('Walking 1', 'WalkDog_1', 'TakingPhoto', 'Directions.54138969', ...).

  Args:
    action: the raw action name.

  Returns:
    One of `H36M_ACTIONS`.
  """
  if isinstance(action, bytes):
    action = action.decode()
  name = re.sub(r'\.\d+$', '', str(action).strip())   # camera id
  name = re.sub(r'[\s_\-]*\d+$', '', name)            # take number
  key = re.sub(r'[^a-z]', '', name.lower())
  if key not in _H36M_ALIASES:
    raise ValueError(f'action {action!r} is not a Human3.6M action; expected one '
                     f'of {", ".join(H36M_ACTIONS)} (or a release spelling)')
  return _H36M_ALIASES[key]


def per_action_mean(errors: Array, actions: Sequence[str]) -> dict[str, float]:
  """Mean error per Human3.6M action column.

  Args:
    errors: [N] per-example errors (e.g. `mpjpe`).
    actions: N raw action strings.

  Returns:
    {column: mean} for the actions present, in `H36M_ACTIONS` order.
  """
  errors = np.asarray(errors, np.float64)
  if errors.ndim != 1 or len(actions) != errors.shape[0]:
    raise ValueError(f'errors must have shape [N] and actions N entries, got '
                     f'{errors.shape} and {len(actions)}')
  columns = np.array([h36m_action_column(a) for a in actions])
  return {a: float(errors[columns == a].mean())
          for a in H36M_ACTIONS if np.any(columns == a)}
