"""Every comparison row of the paper's tables, scored batch by batch.

From one batch of pipeline outputs (`pipeline.make_predict_fn`) and labels,
`comparison_poses` builds the 3D pose of every row:

  Mean pose            the training set's mean root-relative pose (no learning)
  Direct RGB           the regressor on RGB
  Ours w/o Mul-Hyp     the base hypothesis (c = 1.0, l = 10 in the paper)
  Ensemble             the mean of n regressors of the base hypothesis
  Ours w Mul-Hyp       the hypothesis with least reprojection error (Eq. 1)
  Ours w Mul-Hyp (maps)  the hypothesis whose rendered maps best match the
                       predicted ones (`matching.method` 'maps' or 'both')
  Ours w Mul-Hyp + refine  the pipeline's pose: selected by `matching.method`,
                       refined by `refine.steps` (> 0) render-and-compare steps
  Oracle               the hypothesis with least 3D error (an upper bound)
  GT Ske w/o / w       the regressors on maps rendered from the labels
  Base + Mul-S         matched among the c = 1.0 hypotheses (Table 9)
  hyp i (c, l)         each hypothesis alone

and `Accumulator` adds up their MPJPE (overall and per action, all frames of
all takes of an action together), PA-MPJPE, the Table 3/4 errors, PCKh@0.5
and the 2D detections' pixel error (`error_2d_px`: mean distance to the
annotated joints in original-image pixels) as sums and counts, so memory does
not grow with the test set.

Tables 3 and 4 (datasets with camera-frame 3D): the predicted root-relative
pose is placed at the ground-truth root; Table 3 keeps its 2D projection (the
rays through its joints) with the ground-truth depths, Table 4 the ground-truth
rays with its depths. Matching weights come from the detector (the
hourglass' heatmap maxima, a file's scores or visibility flags); ground-truth
visibility only with `detections=ground_truth`. Scoring itself (MPJPE over
the 3D labels, PCKh over the annotated joints) follows the protocols.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from deepskeleton_jax.inference import matching
from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.experiment import stages as stages_lib

MAPS_ROW = 'Ours w Mul-Hyp (maps)'
REFINE_ROW = 'Ours w Mul-Hyp + refine'
MAIN_ROWS = ('Mean pose', 'Direct RGB', 'Ours w/o Mul-Hyp', 'Ensemble', 'Ours w Mul-Hyp',
             MAPS_ROW, REFINE_ROW, 'Oracle', 'GT Ske w/o Mul-Hyp', 'GT Ske w Mul-Hyp')
TABLE9_ROWS = ('Base', 'Ensemble', 'Base + Mul-S', 'Base + Mul-S + Mul-C')
# Tables 3 and 4: the one-hypothesis rows and their sources.
DEPTH_2D_SOURCES = {'Direct RGB': 'Direct RGB', 'Pred Ske': 'Ours w/o Mul-Hyp',
                    'GT Ske': 'GT Ske w/o Mul-Hyp'}


def hypothesis_row(index: int, crop_scale: float, width: float) -> str:
  return f'hyp {index} (c={crop_scale:g}, l={width:g})'


def comparison_poses(out: dict[str, np.ndarray], lay: stages_lib.Layout,
                     mean_pose: np.ndarray | None, weights: np.ndarray | None,
                     intrinsics: np.ndarray | None, picked: dict[str, np.ndarray] | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The 3D pose of every row for one batch.

  Args:
    out: host outputs of the pipeline plus `detections` [b, 16, 2] (any
      source) and, for the Oracle, `joints_3d` [b, 16, 3] with `has_3d`.
    lay: the config's layout.
    mean_pose: [16, 3] the training set's mean root-relative pose, or None.
    weights: [b, 16] matching weights of the detections (None: no detections).
    intrinsics: [b, 4] of the c = 1 crop, or None (scaled orthographic).
    picked: from `render_compare.choose_and_refine` of `out['hyps']` against
      these detections: `map_chosen` [b], and `refined` [b, 16, 3] when
      refining; None: no render-and-compare rows.

  Returns:
    ({row: poses [b, 16, 3]}, {row: chosen hypothesis [b]}).
  """
  b = len(out['joints_3d'])
  poses: dict[str, np.ndarray] = {}
  choice: dict[str, np.ndarray] = {}
  dets = out.get('detections') if weights is not None else None

  def matched(name, hyps, sel=None):
    sel = np.arange(hyps.shape[1]) if sel is None else np.asarray(sel)
    idx, pose = matching.select(hyps[:, sel], dets, weights, intrinsics)
    poses[name], choice[name] = np.asarray(pose), sel[np.asarray(idx)]

  if mean_pose is not None:
    poses['Mean pose'] = np.broadcast_to(mean_pose, (b,) + mean_pose.shape)
  if 'direct' in out:
    poses['Direct RGB'] = out['direct']
  if 'hyps' in out:
    poses['Ours w/o Mul-Hyp'] = poses['Base'] = out['hyps'][:, lay.base]
    for i, (c, w) in enumerate(lay.hypotheses):
      poses[hypothesis_row(i, c, w)] = out['hyps'][:, i]
    if out['has_3d'].any():
      idx, pose = matching.oracle(out['hyps'], out['joints_3d'])
      poses['Oracle'], choice['Oracle'] = np.asarray(pose), np.asarray(idx)
    if dets is not None:
      matched('Ours w Mul-Hyp', out['hyps'])
      poses['Base + Mul-S + Mul-C'] = poses['Ours w Mul-Hyp']
      unit = [i for i, (c, _) in enumerate(lay.hypotheses) if c == 1.0]
      matched('Base + Mul-S', out['hyps'], unit)
    if picked is not None:
      idx = np.asarray(picked['map_chosen'])
      poses[MAPS_ROW], choice[MAPS_ROW] = out['hyps'][np.arange(b), idx], idx
      if 'refined' in picked:
        poses[REFINE_ROW] = np.asarray(picked['refined'])
  if 'ensemble' in out:
    poses['Ensemble'] = np.asarray(matching.ensemble_mean(out['ensemble']))
  if 'gt_hyps' in out:
    poses['GT Ske w/o Mul-Hyp'] = out['gt_hyps'][:, lay.base]
    if dets is not None:
      matched('GT Ske w Mul-Hyp', out['gt_hyps'])
  return poses, choice


def _at_gt_root(pose: np.ndarray, gt: np.ndarray) -> np.ndarray:
  r = skeleton.ROOT
  return pose - pose[:, r:r + 1] + gt[:, r:r + 1]


def with_gt_depth(pose: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Table 3: the pose's 2D (rays, placed at the GT root) with the GT depths."""
  p = _at_gt_root(pose, gt)
  z = gt[..., 2:3]
  return np.concatenate([p[..., :2] / p[..., 2:3] * z, z], axis=-1)


def with_gt_2d(pose: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Table 4: the GT 2D (rays) with the pose's depths (placed at the GT root)."""
  z = _at_gt_root(pose, gt)[..., 2:3]
  return np.concatenate([gt[..., :2] / gt[..., 2:3] * z, z], axis=-1)


def place_in_image(pose: np.ndarray, dets: np.ndarray, weights: np.ndarray,
                   intrinsics: np.ndarray | None) -> np.ndarray:
  """2D joints [b, 16, 2] of root-relative poses, placed by a fit to the detections."""
  if intrinsics is None:
    s, o = camera.fit_scaled_orthographic(pose, dets, weights.astype(np.float32))
    return np.asarray(pose[..., :2] * s[..., None, None] + o[..., None, :])
  t = matching.fit_root_translation(pose[:, None], dets, weights, intrinsics)[:, 0]
  return np.asarray(camera.project_intrinsics(pose + np.asarray(t)[:, None], intrinsics))


def _image_distances(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
                     input_to_image: np.ndarray) -> np.ndarray:
  """Distances (original-image pixels) of the visible joints: input px [b, 16, 2] in."""
  pred_image = camera.apply_affine(pred.astype(np.float64), input_to_image.astype(np.float64))
  gt_image = camera.apply_affine(gt.astype(np.float64), input_to_image.astype(np.float64))
  return np.linalg.norm(np.asarray(pred_image) - np.asarray(gt_image), axis=-1)[visible]


class Accumulator:
  """Sums and counts of every row's scores over the batches seen."""

  def __init__(self, lay: stages_lib.Layout, h36m_actions: bool):
    """Initialises empty sums.

    Args:
      lay: the config's layout.
      h36m_actions: group actions by Human3.6M's table columns (all takes of
        an action together, either spelling); otherwise by the raw name.
    """
    self._lay = lay
    self._h36m = h36m_actions
    self._sums = collections.defaultdict(float)     # (table, row, group) -> sum
    self._counts = collections.defaultdict(int)
    self._pckh = {}                                 # row -> [hits, count, persons]
    self._choices = {}
    self.num_examples = 0

  def _add(self, table: str, row: str, errors: np.ndarray, groups: np.ndarray | None):
    self._sums[table, row, None] += float(errors.sum())
    self._counts[table, row, None] += len(errors)
    if groups is not None:
      for g in np.unique(groups):
        sel = groups == g
        self._sums[table, row, g] += float(errors[sel].sum())
        self._counts[table, row, g] += int(sel.sum())

  def add(self, out: dict[str, np.ndarray], poses: dict[str, np.ndarray],
          choice: dict[str, np.ndarray], weights: np.ndarray | None,
          intrinsics: np.ndarray | None) -> None:
    """Adds one batch (real examples only) of `comparison_poses` rows."""
    unit = self._lay.unit
    self.num_examples += len(out['joints_3d'])
    has3d = out['has_3d'].astype(bool)
    gt = out['joints_3d'][has3d]
    actions = np.array([metrics.h36m_action_column(a) if self._h36m else str(a)
                        for a in out['action'][has3d]])
    for name, pose in poses.items():
      if has3d.any():
        self._add('mpjpe', name, np.asarray(metrics.mpjpe(pose[has3d], gt)), actions)
        self._add('pa_mpjpe', name, np.asarray(metrics.pa_mpjpe(pose[has3d], gt)), None)
    if has3d.any() and out['has_intrinsics'].all():
      for label, source in DEPTH_2D_SOURCES.items():
        if source in poses:
          pose = poses[source][has3d]
          self._add('table3', f'{label} w GT Depth, Pred 2D',
                    np.asarray(metrics.mpjpe(with_gt_depth(pose, gt), gt)), None)
          self._add('table4', f'{label} w GT 2D, Pred Depth',
                    np.asarray(metrics.mpjpe(with_gt_2d(pose, gt), gt)), None)
    for name, idx in choice.items():
      hist = np.bincount(idx, minlength=self._lay.num_hyps)
      self._choices[name] = self._choices.get(name, 0) + hist
    if weights is not None:
      self._add('error_2d_px', '2D detections', _image_distances(
          out['detections'], out['joints_2d'][:, unit], out['visible'].astype(bool),
          out['input_to_image'][:, unit]), None)
    head = out['head_size'][:, unit]
    if weights is not None and (head > 0).any():
      gt2d, vis = out['joints_2d'][:, unit], out['visible']
      self._add_pckh('2D detections', out['detections'], gt2d, head, vis)
      for name, pose in poses.items():
        placed = place_in_image(pose, out['detections'], weights, intrinsics)
        self._add_pckh(name, placed, gt2d, head, vis)

  def _add_pckh(self, name, pred, gt2d, head, vis):
    hits, count, persons = metrics.pckh_counts(pred, gt2d, head, vis)
    acc = self._pckh.setdefault(name, [0, 0, 0])
    acc[0], acc[1], acc[2] = acc[0] + hits, acc[1] + count, acc[2] + persons

  def _means(self, table: str) -> dict[str, float]:
    return {row: self._sums[t, row, g] / self._counts[t, row, g]
            for (t, row, g) in self._counts if t == table and g is None}

  def results(self) -> dict[str, Any]:
    """JSON-serialisable results: every table's rows."""
    res: dict[str, Any] = {'num_examples': self.num_examples}
    mpjpe = self._means('mpjpe')
    if mpjpe:
      res['num_examples_3d'] = self._counts['mpjpe', next(iter(mpjpe)), None]
      res['mpjpe'] = mpjpe
      res['pa_mpjpe'] = self._means('pa_mpjpe')
      per_action = collections.defaultdict(dict)
      for (t, row, g), n in self._counts.items():
        if t == 'mpjpe' and g is not None:
          per_action[row][g] = self._sums[t, row, g] / n
      res['mpjpe_per_action'] = {row: dict(sorted(v.items())) for row, v in per_action.items()}
    for table in ('table3', 'table4'):
      if self._means(table):
        res[f'mpjpe_{table}'] = self._means(table)
    if self._means('error_2d_px'):
      res['error_2d_px'] = self._means('error_2d_px')
    res['choice_histogram'] = {k: v.tolist() for k, v in self._choices.items()}
    if self._pckh:
      res['pckh'] = {}
      for name, (hits, count, persons) in self._pckh.items():
        r = metrics.pckh_from_counts(hits, count, persons)
        res['pckh'][name] = {'per_joint': np.asarray(r['per_joint']).tolist(),
                             'mean': r['mean'], 'mean_joints': r['mean_joints'],
                             'persons': r['persons'], 'groups': r['groups']}
    return res
