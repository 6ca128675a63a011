"""Pose metrics (MPJPE, PA-MPJPE, PCKh) and Markdown tables in the paper's layouts.

3D metrics are pure `jax.numpy` (jit- and vmap-able, NumPy inputs accepted);
PCKh and the tables run on the host in NumPy.

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
predictions in the project's continuous pixels (DESIGN.md) with MATLAB-frame
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
    total over visible joints except pelvis and thorax (percent), and 'groups'
    {Head, Sho., Elb., Wri., Hip, Knee, Ank., Mean} as in the paper's tables.
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
  visible = np.asarray(visible).astype(bool).reshape(-1, k)
  with np.errstate(invalid='ignore', divide='ignore'):
    dist = np.linalg.norm(pred - gt, axis=-1) / head_size
    correct = (dist < threshold) & visible
  count = visible.sum(axis=0)
  hits = correct.sum(axis=0)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_joint = 100.0 * hits / count
  keep = np.ones(k, bool)
  keep[list(_PCKH_EXCLUDED)] = False
  total = count[keep].sum()
  mean = 100.0 * hits[keep].sum() / total if total else math.nan
  result = {'per_joint': per_joint, 'count': count, 'mean': float(mean)}
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


# ----------------------------------------------------------------------------
# Markdown tables.


def _fmt(value: float | None, precision: int) -> str:
  if value is None or not math.isfinite(value):
    return '-'
  return f'{value:.{precision}f}'


def _fmt_delta(value: float | None, base: float | None, precision: int) -> str:
  text = _fmt(value, precision)
  if value is None or base is None or not (math.isfinite(value) and
                                           math.isfinite(base)):
    return text
  # The difference of the printed values, so every row reads consistently.
  delta = round(round(value, precision) - round(base, precision), precision)
  arrow = '↑' if delta > 0 else '↓' if delta < 0 else '±'
  return f'{text}{arrow}{abs(delta):.{precision}f}'


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join([':---'] + ['---:'] * (len(header) - 1)) + '|']
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines)


def _grid(values: Mapping[str, Mapping[str, float]], columns: Sequence[str],
          split: bool, deltas: bool, precision: int) -> str:
  """Markdown table of rows x columns, optionally in two halves with deltas."""
  names = list(values)
  base = values[names[0]] if names else {}
  halves = ([columns[:(len(columns) + 1) // 2], columns[(len(columns) + 1) // 2:]]
            if split else [columns])
  tables = []
  for cols in halves:
    rows = []
    for i, name in enumerate(names):
      cells = [name]
      for c in cols:
        v = values[name].get(c)
        cells.append(_fmt_delta(v, base.get(c), precision) if deltas and i
                     else _fmt(v, precision))
      rows.append(cells)
    tables.append(_markdown(['Method'] + list(cols), rows))
  return '\n\n'.join(tables)


def per_action_table(errors_by_row: Mapping[str, Mapping[str, float]], *,
                     split: bool = True, deltas: bool = False,
                     precision: int = 1) -> str:
  """Markdown table in the layout of the paper's Table 1 (Table 6 with deltas).

  Args:
    errors_by_row: {method: {action: error}}; actions as table columns or raw
      Human3.6M names (mapped with `h36m_action_column`).
    split: two halves (Direction..Sit; SitDown..WalkTogether, Avg) as in the
      paper, or one wide table.
    deltas: append each cell's change from the first row ('↓4.8').
    precision: decimals.

  Returns:
    The Markdown text. Avg is the mean over the actions a row has (missing
    actions print '-'), unless the row gives its own 'Avg' (e.g. a mean pooled
    over all frames: the paper's own Table 1 row prints 86.5, while its 15
    printed actions average 86.3).
  """
  values = {}
  for name, row in errors_by_row.items():
    mapped = {}
    for action, value in row.items():
      if action == 'Avg':
        continue
      column = h36m_action_column(action)
      if column in mapped:
        raise ValueError(f'errors_by_row[{name!r}] has two entries for action '
                         f'{column}')
      mapped[column] = float(value)
    if 'Avg' in row:
      mapped['Avg'] = float(row['Avg'])
    else:
      mapped['Avg'] = (float(np.mean(list(mapped.values()))) if mapped
                       else math.nan)
    values[name] = mapped
  return _grid(values, H36M_ACTIONS + ('Avg',), split, deltas, precision)


def comparison_table(rows: Mapping[str, float], metric_name: str = 'Avg MPJPE',
                     *, precision: int = 1) -> str:
  """Markdown table in the layout of the paper's Table 2.

  Args:
    rows: {method: value}; the first row is the reference.
    metric_name: the value column's title.
    precision: decimals.

  Returns:
    The Markdown text, later rows with their change from the first ('↓12.3').
  """
  values = {name: {metric_name: float(v)} for name, v in rows.items()}
  return _grid(values, (metric_name,), False, True, precision)


def pckh_table(rows: Mapping[str, Mapping[str, Any]], *, split: bool = True,
               deltas: bool = True, precision: int = 1) -> str:
  """Markdown table in the layout of the paper's Table 8 (PCKh@0.5 groups).

  Args:
    rows: {method: pckh() result, or a dict keyed by `PCKH_COLUMNS` (e.g.
      published numbers)}; the first row is the reference for deltas.
    split: two halves (Head..Wri.; Hip..Mean) as in the paper, or one table.
    deltas: append each cell's change from the first row ('↑11.5').
    precision: decimals.

  Returns:
    The Markdown text.
  """
  values = {}
  for name, row in rows.items():
    if 'per_joint' in row:
      values[name] = pckh_groups(row)
    else:
      unknown = set(row) - set(PCKH_COLUMNS)
      if unknown:
        raise ValueError(f'rows[{name!r}] must be a pckh() result or have keys '
                         f'from {PCKH_COLUMNS}, got {sorted(unknown)}')
      values[name] = {k: float(v) for k, v in row.items()}
  return _grid(values, PCKH_COLUMNS, split, deltas, precision)


def generic_table(values_by_row: Mapping[str, Mapping[str, float]], *,
                  precision: int = 1) -> str:
  """Markdown table of {row: {column: value}} with an Avg (mean over columns).

  For per-action errors of datasets whose actions are not Human3.6M's (e.g.
  the synthetic set); columns in sorted order.

  Args:
    values_by_row: {method: {column: value}}.
    precision: decimals.

  Returns:
    The Markdown text.
  """
  columns = sorted({c for row in values_by_row.values() for c in row})
  values = {}
  for name, row in values_by_row.items():
    values[name] = {c: float(v) for c, v in row.items()}
    values[name]['Avg'] = float(np.mean(list(row.values()))) if row else math.nan
  return _grid(values, tuple(columns) + ('Avg',), False, False, precision)
