"""Tests for deepskeleton_jax.metrics against independent computations."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io
from scipy.spatial.transform import Rotation

from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.evaluation import tables
from deepskeleton_jax.geometry import skeleton


def _random_poses(seed, shape=(6,), k=16):
  return np.random.default_rng(seed).normal(0, 300, shape + (k, 3))


# ----------------------------------------------------------------------------
# MPJPE and PA-MPJPE.


def test_mpjpe_matches_loop():
  pred, gt = _random_poses(0), _random_poses(1)
  out = np.asarray(metrics.mpjpe(pred, gt))
  for i in range(len(pred)):
    p = pred[i] - pred[i, skeleton.ROOT]
    g = gt[i] - gt[i, skeleton.ROOT]
    expected = np.mean([np.linalg.norm(p[k] - g[k]) for k in range(16)])
    np.testing.assert_allclose(out[i], expected, rtol=1e-5)
  no_root = np.asarray(metrics.mpjpe(pred, gt, root=None))
  np.testing.assert_allclose(no_root, np.linalg.norm(pred - gt, axis=-1).mean(-1),
                             rtol=1e-5)


def test_mpjpe_ignores_global_translation_only_with_root():
  pred, gt = _random_poses(2), _random_poses(3)
  shifted = pred + np.array([100.0, -40.0, 900.0])
  np.testing.assert_allclose(metrics.mpjpe(shifted, gt), metrics.mpjpe(pred, gt),
                             rtol=1e-5)
  assert np.all(metrics.mpjpe(shifted, gt, root=None) !=
                metrics.mpjpe(pred, gt, root=None))


def _horn_align(pred, gt):
  """Similarity alignment by Horn's unit-quaternion method (independent)."""
  mp, mg = pred.mean(0), gt.mean(0)
  a, b = pred - mp, gt - mg
  s = a.T @ b                                     # S_ij = sum a_i b_j
  (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = s
  n = np.array([
      [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
      [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
      [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
      [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz]])
  w, v = np.linalg.eigh(n)
  q = v[:, np.argmax(w)]                           # (w, x, y, z)
  rot = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
  ra = a @ rot.T
  scale = np.sum(b * ra) / np.sum(a * a)
  return scale * ra + mg


def test_pa_mpjpe_equals_independent_alignment():
  pred, gt = _random_poses(4), _random_poses(5)
  out = np.asarray(metrics.pa_mpjpe(pred, gt))
  for i in range(len(pred)):
    aligned = _horn_align(pred[i], gt[i])
    expected = np.linalg.norm(aligned - gt[i], axis=-1).mean()
    np.testing.assert_allclose(out[i], expected, rtol=1e-4)
  assert np.all(out <= np.asarray(metrics.mpjpe(pred, gt, root=None)))


def test_pa_mpjpe_uses_a_proper_rotation():
  gt = _random_poses(6)
  mirrored = gt * np.array([-1.0, 1.0, 1.0])      # only a reflection aligns it
  out = np.asarray(metrics.pa_mpjpe(mirrored, gt))
  assert np.all(out > 10.0)
  for i in range(len(gt)):
    aligned = _horn_align(mirrored[i], gt[i])
    np.testing.assert_allclose(
        out[i], np.linalg.norm(aligned - gt[i], axis=-1).mean(), rtol=1e-4)


def test_pa_mpjpe_invariant_to_similarity_of_prediction():
  pred, gt = _random_poses(7, (4, 3)), _random_poses(8, (4, 3))
  rot = Rotation.random(12, random_state=9).as_matrix().reshape(4, 3, 3, 3)
  scale = np.random.default_rng(10).uniform(0.3, 3.0, (4, 3))
  shift = np.random.default_rng(11).normal(0, 1000, (4, 3, 3))
  moved = (scale[..., None, None] * np.einsum('...ij,...kj->...ki', rot, pred)
           + shift[..., None, :])
  np.testing.assert_allclose(metrics.pa_mpjpe(moved, gt),
                             metrics.pa_mpjpe(pred, gt), rtol=1e-3)
  np.testing.assert_allclose(
      metrics.pa_mpjpe(scale[..., None, None] *
                       np.einsum('...ij,...kj->...ki', rot, gt), gt),
      np.zeros((4, 3)), atol=1e-2)


def test_3d_metrics_jit():
  pred, gt = jnp.asarray(_random_poses(12)), jnp.asarray(_random_poses(13))
  np.testing.assert_allclose(jax.jit(metrics.pa_mpjpe)(pred, gt),
                             metrics.pa_mpjpe(np.asarray(pred), np.asarray(gt)),
                             rtol=1e-4)
  np.testing.assert_allclose(jax.jit(metrics.mpjpe)(pred, gt),
                             metrics.mpjpe(pred, gt), rtol=1e-5)


# ----------------------------------------------------------------------------
# PCKh.


def test_mpii_head_size():
  boxes = np.array([[[10.0, 20.0], [40.0, 60.0]], [[0.0, 0.0], [6.0, 8.0]]])
  np.testing.assert_allclose(metrics.mpii_head_size(boxes), [30.0, 6.0])


def test_pckh_matches_loop():
  rng = np.random.default_rng(14)
  n, k = 50, 16
  gt = rng.uniform(0, 300, (n, k, 2))
  pred = gt + rng.normal(0, 12, (n, k, 2))
  head = rng.uniform(15, 40, n)
  vis = rng.uniform(size=(n, k)) > 0.2
  vis[:, 3] = False                               # a joint never visible
  out = metrics.pckh(pred, gt, head, vis)
  hits, counts = np.zeros(k), np.zeros(k)
  for i in range(n):
    for j in range(k):
      if vis[i, j]:
        counts[j] += 1
        hits[j] += np.hypot(*(pred[i, j] - gt[i, j])) < 0.5 * head[i]
  with np.errstate(invalid='ignore'):
    np.testing.assert_allclose(out['per_joint'], 100 * hits / counts)
  assert np.isnan(out['per_joint'][3])
  keep = [j for j in range(k) if j not in (6, 7)]
  np.testing.assert_allclose(out['mean'],
                             100 * hits[keep].sum() / counts[keep].sum())
  np.testing.assert_array_equal(out['count'], counts)
  assert list(out['groups']) == list(metrics.PCKH_COLUMNS)


def test_pckh_threshold_is_strict():
  gt = np.zeros((1, 16, 2))
  pred = np.zeros((1, 16, 2))
  pred[0, :, 0] = 5.0                             # exactly 0.5 x head size 10
  pred[0, 0, 0] = 4.99
  out = metrics.pckh(pred, gt, np.array([10.0]), np.ones((1, 16), bool))
  assert out['per_joint'][0] == 100.0
  assert np.all(out['per_joint'][1:] == 0.0)


def test_pckh_reproduces_published_mpii_numbers(shared_data):
  folder = shared_data / 'mpii_eval'
  gt = metrics.load_mpii_eval_gt(folder / 'gt_valid_tompson_format.mat')
  assert gt['joints'].shape == (2958, 16, 2)
  preds = scipy.io.loadmat(folder / 'bearpaw-hg_s8_b1.mat')['preds']
  groups = metrics.pckh(preds, gt['joints'], gt['head_size'],
                        gt['visible'])['groups']
  # shared/data/README.md: Head 96.79, Shoulder 95.19, Elbow 90.08,
  # Wrist 85.32, Hip 87.48, Knee 84.26, Ankle 80.73.
  published = {'Head': 96.79, 'Sho.': 95.19, 'Elb.': 90.08, 'Wri.': 85.32,
               'Hip': 87.48, 'Knee': 84.26, 'Ank.': 80.73}
  for name, value in published.items():
    assert abs(groups[name] - value) <= 0.005, (name, groups[name], value)
  assert 80.0 < groups['Mean'] < 97.0


@pytest.mark.parametrize('stacks,mean,mean_joints', [(2, 87.30, 86.76), (8, 89.09, 88.64)])
def test_pckh_both_means_match_bearpaws_published_totals(shared_data, stacks, mean,
                                                           mean_joints):
  # bearpaw/pytorch-pose: its evaluation's total pools all visible joints but
  # pelvis and thorax (hg_s2 87.30, hg_s8 89.09); its README table's "Mean" is
  # the unweighted mean of those 14 joints (86.76, 88.64).
  folder = shared_data / 'mpii_eval'
  gt = metrics.load_mpii_eval_gt(folder / 'gt_valid_tompson_format.mat')
  preds = scipy.io.loadmat(folder / f'bearpaw-hg_s{stacks}_b1.mat')['preds']
  out = metrics.pckh(preds, gt['joints'], gt['head_size'], gt['visible'])
  assert abs(out['mean'] - mean) < 0.005
  assert abs(out['mean_joints'] - mean_joints) < 0.005
  assert out['persons'] == 2958


def test_pckh_leaves_out_persons_without_a_head_size():
  rng = np.random.default_rng(15)
  gt = rng.uniform(0, 300, (6, 16, 2))
  pred = gt + rng.normal(0, 3, gt.shape)
  head = np.full(6, 30.0)
  vis = np.ones((6, 16), bool)
  full = metrics.pckh(pred[:4], gt[:4], head[:4], vis[:4])
  head[4:] = [0.0, np.nan]                       # unknown: not misses
  pred[4:] += 1000.0
  out = metrics.pckh(pred, gt, head, vis)
  np.testing.assert_allclose(out['per_joint'], full['per_joint'])
  assert out['persons'] == 4 and out['mean'] == full['mean']
  # Sums over batches give the same result as one call.
  parts = [metrics.pckh_counts(pred[i:i + 3], gt[i:i + 3], head[i:i + 3], vis[i:i + 3])
           for i in (0, 3)]
  summed = metrics.pckh_from_counts(parts[0][0] + parts[1][0], parts[0][1] + parts[1][1],
                                    parts[0][2] + parts[1][2])
  np.testing.assert_allclose(summed['per_joint'], out['per_joint'])


def test_load_mpii_eval_gt_errors(tmp_path):
  with pytest.raises(ValueError, match='no such'):
    metrics.load_mpii_eval_gt(tmp_path / 'missing.mat')
  path = tmp_path / 'bad.mat'
  scipy.io.savemat(path, {'pos_gt_src': np.zeros((16, 2, 3)),
                          'jnt_missing': np.zeros((16, 3))})
  with pytest.raises(ValueError, match='headboxes_src'):
    metrics.load_mpii_eval_gt(path)


# ----------------------------------------------------------------------------
# Human3.6M actions and tables.


@pytest.mark.parametrize('raw, column', [
    ('Walking 1', 'Walk'), ('TakingPhoto', 'Photo'), ('WalkDog 1', 'WalkDog'),
    ('Directions', 'Direction'), ('Discussion', 'Discuss'), ('Eating', 'Eat'),
    ('Greeting', 'Greet'), ('Phoning', 'Phone'), ('Posing', 'Pose'),
    ('Purchases', 'Purchase'), ('Sitting', 'Sit'), ('SittingDown', 'SitDown'),
    ('Smoking', 'Smoke'), ('Photo', 'Photo'), ('Waiting', 'Wait'),
    ('Walking', 'Walk'), ('WalkingDog', 'WalkDog'),
    ('WalkTogether', 'WalkTogether'), ('SittingDown 2', 'SitDown'),
    ('Eating_2', 'Eat'), ('Directions.54138969', 'Direction'),
    ('Walking 1.60457274', 'Walk'), (b'Phoning 1', 'Phone'),
])
def test_h36m_action_column(raw, column):
  assert metrics.h36m_action_column(raw) == column


def test_h36m_actions_are_closed_under_mapping():
  assert len(metrics.H36M_ACTIONS) == 15
  for a in metrics.H36M_ACTIONS:
    assert metrics.h36m_action_column(a) == a
  with pytest.raises(ValueError, match='Dancing'):
    metrics.h36m_action_column('Dancing 1')


def test_per_action_mean():
  errors = np.array([1.0, 3.0, 10.0, 20.0, 5.0])
  actions = ['Walking 1', 'Walking', 'Eating 2', 'Eating', 'Directions']
  assert metrics.per_action_mean(errors, actions) == {
      'Direction': 5.0, 'Eat': 15.0, 'Walk': 2.0}


def _cells(table, row_name):
  """Cells of the Markdown row(s) starting with row_name, halves joined."""
  cells = []
  for line in table.splitlines():
    parts = [c.strip() for c in line.strip('|').split('|')]
    if parts[0] == row_name:
      cells += parts[1:]
  return cells


def _headers(table):
  return [line.strip('|').split('|')[1:] for line in table.splitlines()
          if line.startswith('| Method')]


# The paper's Table 6 (per-action values; its Avg column as printed).
_TABLE6 = {
    'Ours w/o Mul-Hyp': [94.5, 89.1, 103.8, 101.7, 131.4, 97.0, 107.7, 84.4,
                         97.7, 93.8, 98.0, 111.6, 110.9, 97.6, 111.0],
    'Ensemble': [89.7, 85.2, 100.3, 97.7, 126.5, 94.0, 102.2, 80.7, 95.0, 90.9,
                 94.0, 104.6, 106.8, 92.6, 106.6],
}


def test_per_action_table_layout_and_deltas():
  rows = {name: dict(zip(metrics.H36M_ACTIONS, v)) for name, v in _TABLE6.items()}
  table = tables.per_action_table(rows, deltas=True)
  heads = [[h.strip() for h in hs] for hs in _headers(table)]
  assert heads == [list(metrics.H36M_ACTIONS[:8]),
                   list(metrics.H36M_ACTIONS[8:]) + ['Avg']]
  ens = _cells(table, 'Ensemble')
  # Deltas as printed in the paper's Table 6.
  assert ens[:3] == ['89.7↓4.8', '85.2↓3.9', '100.3↓3.5']
  assert ens[14] == '106.6↓4.4'
  base = _cells(table, 'Ours w/o Mul-Hyp')
  assert float(base[-1]) == pytest.approx(np.mean(_TABLE6['Ours w/o Mul-Hyp']),
                                          abs=0.05)
  wide = tables.per_action_table(rows, split=False)
  assert len(_headers(wide)) == 1 and len(_cells(wide, 'Ensemble')) == 16
  assert '↓' not in wide


def test_per_action_table_raw_names_and_explicit_avg():
  table = tables.per_action_table(
      {'A': {'Walking 1': 90.0, 'TakingPhoto': 80.0, 'Avg': 86.5}}, split=False)
  cells = _cells(table, 'A')
  assert cells[metrics.H36M_ACTIONS.index('Walk')] == '90.0'
  assert cells[metrics.H36M_ACTIONS.index('Photo')] == '80.0'
  assert cells[0] == '-' and cells[-1] == '86.5'
  with pytest.raises(ValueError, match='two entries'):
    tables.per_action_table({'A': {'Walking 1': 1.0, 'Walking 2': 2.0}})


def test_comparison_table_matches_paper_table2():
  table = tables.comparison_table(
      {'Direct RGB': 114.2, 'Ours w/o Mul-Hyp': 101.9, 'Ours w Mul-Hyp': 86.5},
      'Avg MPJPE')
  assert _cells(table, 'Direct RGB') == ['114.2']
  assert _cells(table, 'Ours w/o Mul-Hyp') == ['101.9↓12.3']
  assert _cells(table, 'Ours w Mul-Hyp') == ['86.5↓27.7']
  assert 'Avg MPJPE' in table.splitlines()[0]


def test_pckh_table_matches_paper_table8():
  rows = {
      'Direct RGB': dict(zip(metrics.PCKH_COLUMNS,
                             [79.1, 75.1, 58.0, 46.9, 64.5, 49.0, 33.1, 61.8])),
      'Ours w/o Mul-Hyp': dict(zip(metrics.PCKH_COLUMNS,
                                   [90.6, 83.4, 70.0, 54.5, 74.2, 59.4, 38.8,
                                    71.2])),
  }
  table = tables.pckh_table(rows)
  heads = [[h.strip() for h in hs] for hs in _headers(table)]
  assert heads == [['Head', 'Sho.', 'Elb.', 'Wri.'], ['Hip', 'Knee', 'Ank.', 'Mean']]
  assert _cells(table, 'Ours w/o Mul-Hyp') == [
      '90.6↑11.5', '83.4↑8.3', '70.0↑12.0', '54.5↑7.6', '74.2↑9.7', '59.4↑10.4',
      '38.8↑5.7', '71.2↑9.4']


def test_pckh_table_from_pckh_results():
  rng = np.random.default_rng(15)
  gt = rng.uniform(0, 100, (20, 16, 2))
  vis = np.ones((20, 16), bool)
  head = np.full(20, 10.0)
  res = metrics.pckh(gt + rng.normal(0, 3, gt.shape), gt, head, vis)
  table = tables.pckh_table({'x': res}, split=False)
  cells = [float(c) for c in _cells(table, 'x')]
  per_joint = res['per_joint']
  expected = [per_joint[9], (per_joint[12] + per_joint[13]) / 2,
              (per_joint[11] + per_joint[14]) / 2,
              (per_joint[10] + per_joint[15]) / 2, (per_joint[2] + per_joint[3]) / 2,
              (per_joint[1] + per_joint[4]) / 2, (per_joint[0] + per_joint[5]) / 2,
              res['mean']]
  np.testing.assert_allclose(cells, expected, atol=0.05)
  with pytest.raises(ValueError, match='Neck'):
    tables.pckh_table({'y': {'Neck': 1.0}})


# ----------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize('call, pattern', [
    (lambda: metrics.mpjpe(np.zeros((2, 16, 2)), np.zeros((2, 16, 2))),
     r'pred must have shape \[\.\.\., K, 3\]'),
    (lambda: metrics.mpjpe(np.zeros((2, 16, 3)), np.zeros((2, 15, 3))),
     'pred and gt'),
    (lambda: metrics.pa_mpjpe(np.zeros((16,)), np.zeros((16,))), 'pred'),
    (lambda: metrics.mpjpe(np.zeros((16, 3)), np.zeros((16, 3)), root=16),
     'root'),
    (lambda: metrics.pckh(np.zeros((2, 15, 2)), np.zeros((2, 15, 2)),
                          np.ones(2), np.ones((2, 15))),
     re.escape('pred must have shape [..., 16, 2]')),
    (lambda: metrics.pckh(np.zeros((2, 16, 2)), np.zeros((2, 16, 2)),
                          np.ones(3), np.ones((2, 16))), 'head_size'),
    (lambda: metrics.pckh(np.zeros((2, 16, 2)), np.zeros((2, 16, 2)),
                          np.ones(2), np.ones((2, 15))), 'visible'),
    (lambda: metrics.mpii_head_size(np.zeros((3, 4))), 'head_boxes'),
    (lambda: metrics.per_action_mean(np.zeros(3), ['Walking']), 'errors'),
])
def test_bad_input(call, pattern):
  with pytest.raises(ValueError, match=pattern):
    call()
