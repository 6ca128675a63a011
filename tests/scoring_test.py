"""Tests of evaluation.scoring and report: every row, per action, Tables 3/4, matching weights."""

import numpy as np
import pytest

from deepskeleton_jax import errors

from deepskeleton_jax.evaluation import evaluate
from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.evaluation import report
from deepskeleton_jax.evaluation import scoring
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages as stages_lib

K = skeleton.NUM_JOINTS
# Official Human3.6M take names of the test subjects, both spellings.
TAKES = ('Walking', 'Walking 1', 'TakingPhoto', 'Photo 1', 'WalkDog', 'WalkingDog 1',
         'WalkTogether 1', 'WalkTogether', 'SittingDown 2', 'SittingDown', 'Directions',
         'Directions 1', 'Eating 2')
INTR = np.array([1100.0, 1100.0, 500.0, 500.0], np.float32)


def _layout(crop_scales=(1.0, 1.0, 1.25), widths=(5.0, 10.0, 10.0), base=1):
  c = config_lib.base_config()
  c.hypotheses.crop_scales, c.hypotheses.stick_widths, c.hypotheses.base = (
      crop_scales, widths, base)
  return stages_lib.layout(config_lib.finalize(c))


def _batch(rng, actions, h=3):
  b = len(actions)
  gt = rng.normal(0, 250, (b, K, 3)) + [0.0, 0.0, 5000.0]
  hyps = gt[:, None] + rng.normal(0, 60, (b, h, K, 3))
  hyps -= hyps[:, :, skeleton.ROOT:skeleton.ROOT + 1]
  joints_2d = camera.project_intrinsics(gt, INTR.astype(np.float64))
  return {
      'joints_3d': gt.astype(np.float32), 'has_3d': np.ones(b, bool),
      'has_intrinsics': np.ones(b, bool), 'intrinsics': np.tile(INTR, (b, 2, 1)),
      'joints_2d': np.repeat(joints_2d[:, None], 2, axis=1).astype(np.float32),
      'visible': np.ones((b, K), bool), 'head_size': np.zeros((b, 2), np.float32),
      'input_to_image': np.tile(np.eye(2, 3, dtype=np.float32), (b, 2, 1, 1)),
      'action': np.array(actions), 'hyps': hyps.astype(np.float32),
      'gt_hyps': (hyps + rng.normal(0, 5, hyps.shape)).astype(np.float32),
      'direct': (gt + rng.normal(0, 90, gt.shape)).astype(np.float32),
      'detections': joints_2d.astype(np.float32),
  }


def test_mpjpe_per_action_pools_all_takes_of_an_action():
  rng = np.random.default_rng(0)
  lay = _layout()
  acc = scoring.Accumulator(lay, h36m_actions=True)
  batches = [_batch(rng, TAKES[:7]), _batch(rng, TAKES[7:])]
  for data in batches:
    w = np.ones((len(data['action']), K), np.float32)
    intr = data['intrinsics'][:, lay.unit]
    poses, choice = scoring.comparison_poses(data, lay, np.zeros((K, 3)), w, intr)
    acc.add(data, poses, choice, w, intr)
  res = acc.results()
  # Independent: per frame errors of the base hypothesis, grouped by hand.
  columns = {'Walking': 'Walk', 'Walking 1': 'Walk', 'TakingPhoto': 'Photo',
             'Photo 1': 'Photo', 'WalkDog': 'WalkDog', 'WalkingDog 1': 'WalkDog',
             'WalkTogether 1': 'WalkTogether', 'WalkTogether': 'WalkTogether',
             'SittingDown 2': 'SitDown', 'SittingDown': 'SitDown', 'Directions': 'Direction',
             'Directions 1': 'Direction', 'Eating 2': 'Eat'}
  err, col = [], []
  for data in batches:
    base = data['hyps'][:, lay.base]
    gt = data['joints_3d'] - data['joints_3d'][:, skeleton.ROOT:skeleton.ROOT + 1]
    err += list(np.linalg.norm(base - gt, axis=-1).mean(-1))
    col += [columns[a] for a in data['action']]
  err, col = np.array(err), np.array(col)
  table = res['mpjpe_per_action']['Ours w/o Mul-Hyp']
  assert set(table) == set(columns.values())
  for c in set(columns.values()):
    np.testing.assert_allclose(table[c], err[col == c].mean(), rtol=1e-5)
  np.testing.assert_allclose(res['mpjpe']['Ours w/o Mul-Hyp'], err.mean(), rtol=1e-5)
  assert res['num_examples_3d'] == len(TAKES)
  # The report prints the paper's Table 1 columns, not one column per take.
  res.update(detections='ground_truth', matching_weights='x', hypotheses=[[1, 5]], base=1)
  text = report.markdown(res, 'human36m', 'test')
  assert '| Method | Direction | Discuss | Eat |' in text
  assert 'Walking 1' not in text and 'Mean pose' in text


def test_tables_3_and_4_take_the_true_depth_or_2d():
  rng = np.random.default_rng(1)
  gt = rng.normal(0, 250, (5, K, 3)) + [0.0, 0.0, 5000.0]
  rel = gt - gt[:, skeleton.ROOT:skeleton.ROOT + 1]
  # Right 2D (same rays), wrong depths: GT depth repairs it, GT 2D does not.
  scale = rng.uniform(0.7, 1.3, (5, K, 1))
  scale[:, skeleton.ROOT] = 1.0  # placed at the GT root, it lies on the GT rays
  placed = gt * scale
  pred = placed - placed[:, skeleton.ROOT:skeleton.ROOT + 1]
  assert float(np.max(metrics.mpjpe(scoring.with_gt_depth(pred, gt), gt))) < 1e-3
  # Right depths, wrong 2D: GT 2D repairs it.
  wrong = rel + np.concatenate([rng.normal(0, 80, (5, K, 2)), np.zeros((5, K, 1))], -1)
  wrong_placed = wrong + gt[:, skeleton.ROOT:skeleton.ROOT + 1]
  assert float(np.max(metrics.mpjpe(scoring.with_gt_2d(wrong, gt), gt))) < 1e-3
  # And each leaves the other error in place.
  assert float(np.min(metrics.mpjpe(scoring.with_gt_2d(pred, gt), gt))) > 1.0
  ray_err = np.linalg.norm(wrong_placed[..., :2] / wrong_placed[..., 2:] -
                           gt[..., :2] / gt[..., 2:], axis=-1)
  assert ray_err.max() > 1e-3
  assert float(np.min(metrics.mpjpe(scoring.with_gt_depth(wrong, gt), gt))) > 1.0


def test_every_row_and_table9_subsets():
  rng = np.random.default_rng(2)
  lay = _layout()
  data = _batch(rng, ['Walking'] * 6)
  data['ensemble'] = data['hyps'][:, :2] + 1.0
  w = np.ones((6, K), np.float32)
  picked = {'map_chosen': np.array([2, 0, 1, 2, 0, 1]), 'refined': data['hyps'][:, 0] + 3.0}
  poses, choice = scoring.comparison_poses(data, lay, np.full((K, 3), 7.0), w, None, picked)
  for row in scoring.MAIN_ROWS + scoring.TABLE9_ROWS:
    assert poses[row].shape == (6, K, 3), row
  np.testing.assert_array_equal(poses[scoring.MAPS_ROW][1], data['hyps'][1, 0])
  np.testing.assert_array_equal(poses[scoring.MAPS_ROW][3], data['hyps'][3, 2])
  np.testing.assert_array_equal(choice[scoring.MAPS_ROW], picked['map_chosen'])
  np.testing.assert_array_equal(poses[scoring.REFINE_ROW], picked['refined'])
  without, _ = scoring.comparison_poses(data, lay, None, w, None)
  assert scoring.MAPS_ROW not in without and scoring.REFINE_ROW not in without
  np.testing.assert_array_equal(poses['Mean pose'][3], np.full((K, 3), 7.0))
  # Mul-S chooses among the c = 1.0 hypotheses only (0 and 1 here).
  assert set(choice['Base + Mul-S'].tolist()) <= {0, 1}
  np.testing.assert_array_equal(poses['Base'], data['hyps'][:, 1])
  idx = choice['Oracle']
  gt = data['joints_3d']
  errs = np.stack([metrics.mpjpe(data['hyps'][:, i], gt) for i in range(3)], -1)
  np.testing.assert_array_equal(idx, np.argmin(errs, -1))


def test_matching_uses_the_detectors_weights_not_ground_truth_visibility():
  # Two hypotheses; the detection of one joint is wild but the detector says
  # so (confidence 0). With the detector's weights the right hypothesis wins;
  # weighting by the (all-true) ground-truth visibility would pick the other.
  rng = np.random.default_rng(3)
  pose = rng.normal(0, 300, (K, 3))
  dets = (0.05 * pose[:, :2] + 100.0).astype(np.float32)
  other = pose.copy()
  other[:, :2] += rng.normal(0, 40, (K, 2))
  wild = 3
  dets[wild] = [900.0, -900.0]
  other[wild, :2] = (dets[wild] - 100.0) / 0.05  # the other fits the wild joint exactly
  hyps = np.stack([pose, other])[None].astype(np.float32)
  conf = np.ones((1, K), np.float32)
  conf[0, wild] = 0.0
  lay = _layout(crop_scales=(1.0, 1.0), widths=(10.0, 12.0), base=0)
  data = {'hyps': hyps, 'joints_3d': pose[None].astype(np.float32), 'has_3d': np.ones(1, bool),
          'detections': dets[None]}
  _, choice = scoring.comparison_poses(data, lay, None, conf, None)
  assert int(choice['Ours w Mul-Hyp'][0]) == 0
  _, gt_vis_choice = scoring.comparison_poses(data, lay, None, np.ones((1, K)), None)
  assert int(gt_vis_choice['Ours w Mul-Hyp'][0]) == 1
  # The evaluator feeds the hourglass' confidences, ground truth only when asked.
  config = config_lib.finalize(config_lib.base_config())
  config.eval.detections = 'hourglass'
  source = evaluate.DetectionSource(config, {'hourglass': None}, '/tmp/w')
  out = {'detections': dets[None], 'detection_conf': conf, 'visible': np.ones((1, K), bool),
         'joints_2d': np.zeros((1, 1, K, 2), np.float32)}
  got_dets, got_w = source(out)
  np.testing.assert_array_equal(got_w, conf)
  config.eval.detections = 'ground_truth'
  _, got_w = evaluate.DetectionSource(config, {}, '/tmp/w')(out)
  np.testing.assert_array_equal(got_w, np.ones((1, K)))


_ORDER = ['a.jpg#0', 'b.jpg#0', 'b.jpg#1', 'c.jpg#0', 'd.jpg#2']


def _file_source(monkeypatch, path, order=_ORDER, convention='auto'):
  monkeypatch.setattr(evaluate.registry, 'row_order', lambda data, split: order)
  config = config_lib.finalize(config_lib.base_config())
  config.eval.detections = str(path)
  config.eval.detections_convention = convention
  return evaluate.DetectionSource(config, {}, '/tmp/w')


def test_detection_file_rows_join_examples_by_key_with_their_scores(tmp_path, monkeypatch):
  path = tmp_path / 'dets.npz'
  joints = np.random.default_rng(4).uniform(0, 100, (5, K, 2)).astype(np.float32)
  scores = np.random.default_rng(5).uniform(0, 1, (5, K)).astype(np.float32)
  np.savez(path, preds=joints, scores=scores)
  source = _file_source(monkeypatch, path)
  # Input pixels = image pixels / 2 - 1 (input_to_image: x 2, + 2).
  to_image = np.tile(np.array([[2.0, 0, 2], [0, 2.0, 2]], np.float32), (2, 1, 1, 1))
  out = {'image_name': np.array(['d.jpg', 'b.jpg']), 'frame': np.array([2, 0]),
         'index': np.array([0, 1]), 'input_to_image': to_image}
  dets, w = source(out)
  # Rows 4 and 1 by key (not by index 0, 1), read 1-based (-0.5) by default.
  np.testing.assert_allclose(dets, (joints[[4, 1]] - 0.5 - 2) / 2, atol=1e-4)
  np.testing.assert_array_equal(w, scores[[4, 1]])
  assert 'scores' in source.weights
  dets, _ = _file_source(monkeypatch, path, convention='zero_based')(out)
  np.testing.assert_allclose(dets, (joints[[4, 1]] + 0.5 - 2) / 2, atol=1e-4)
  with pytest.raises(errors.InputError, match=r'example a\.jpg#1 is not among'):
    source({**out, 'image_name': np.array(['a.jpg', 'b.jpg']), 'frame': np.array([1, 0])})


def test_detection_files_with_missing_or_surplus_rows_are_refused(tmp_path, monkeypatch):
  path = tmp_path / 'dets.npy'
  np.save(path, np.zeros((5, K, 2), np.float32))
  with pytest.raises(errors.InputError, match=r'dets\.npy: 5 rows for the 6 .* no row for e\.jpg#0'):
    _file_source(monkeypatch, path, _ORDER + ['e.jpg#0'])
  with pytest.raises(errors.InputError, match=r'dets\.npy: 5 rows for the 4 .* rows 4 to 4 are surplus'):
    _file_source(monkeypatch, path, _ORDER[:4])
  with pytest.raises(errors.InputError, match='rows carry no names'):
    _file_source(monkeypatch, path, None)


def test_2d_error_row_is_the_image_pixel_distance():
  lay = _layout()
  rng = np.random.default_rng(6)
  data = _batch(rng, ['Walking'] * 4)
  data['input_to_image'] = np.tile(np.array([[3.0, 0, 7], [0, 3.0, -5]], np.float32), (4, 2, 1, 1))
  data['detections'] = data['joints_2d'][:, lay.unit] + np.float32([0.6, 0.8])  # 1 input px
  data['visible'][0, :4] = False  # not annotated: not counted (they are far off)
  data['detections'][0, :4] += 100
  acc = scoring.Accumulator(lay, h36m_actions=True)
  w = np.ones((4, K), np.float32)
  poses, choice = scoring.comparison_poses(data, lay, None, w, None)
  acc.add(data, poses, choice, w, None)
  np.testing.assert_allclose(acc.results()['error_2d_px']['2D detections'], 3.0, rtol=1e-4)


def test_report_pckh_prints_both_means():
  res = {'num_examples': 2, 'hypotheses': [[1.0, 10.0]], 'base': 0,
         'detections': 'x.mat', 'matching_weights': 'w',
         'pckh': {'Ours w/o Mul-Hyp': {'per_joint': [50.0] * 16, 'mean': 51.0,
                                       'mean_joints': 49.5, 'persons': 2},
                  'GT Ske w/o Mul-Hyp': {'per_joint': [90.0] * 16, 'mean': 91.0,
                                         'mean_joints': 89.5, 'persons': 2}}}
  text = report.markdown(res, 'mpii', 'validation')
  assert 'Table 10' in text and '49.5' in text and '51.0' in text


@pytest.mark.parametrize('key,value', [('data.val_split', 'test'),
                                       ('data.train_split', 'test[:10]'),
                                       ('regressor.gt_split', 'test')])
def test_training_splits_must_not_be_the_test_split(key, value):
  c = config_lib.base_config()
  group, name = key.split('.')
  c[group][name] = value
  with pytest.raises(ValueError, match=f'config.{key}=.*only by --mode=eval'):
    config_lib.finalize(c)
