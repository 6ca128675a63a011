"""Tests of evaluation.detections: published MPII result files read back exactly."""

import json

import h5py
import numpy as np
import pytest
import scipy.io

from deepskeleton_jax import errors
from deepskeleton_jax.evaluation import detections


def _pckh_per_joint(pred, gt_file):
  """Official MPII PCKh@0.5 per joint, from the evaluation .mat directly."""
  gt = scipy.io.loadmat(gt_file)
  pos = gt['pos_gt_src'].transpose(2, 0, 1)
  valid = gt['jnt_missing'].T == 0
  boxes = gt['headboxes_src']
  head = 0.6 * np.linalg.norm(boxes[1] - boxes[0], axis=0)
  dist = np.linalg.norm(pred - pos, axis=-1) / head[:, None]
  return 100 * ((dist <= 0.5) & valid).sum(0) / valid.sum(0)


def test_load_bearpaw_mat_reproduces_published_pckh(shared_data):
  folder = shared_data / 'mpii_eval'
  preds = detections.load_detections(folder / 'bearpaw-hg_s8_b1.mat')
  assert preds.shape == (2958, 16, 2) and preds.dtype == np.float32
  pck = _pckh_per_joint(preds, folder / 'gt_valid_tompson_format.mat')
  groups = {9: 96.79, (12, 13): 95.19, (11, 14): 90.08, (10, 15): 85.32,
            (2, 3): 87.48, (1, 4): 84.26, (0, 5): 80.73}
  for joints, published in groups.items():
    assert abs(np.mean(pck[list(np.atleast_1d(joints))]) - published) < 0.01


def test_load_h5_files(shared_data):
  folder = shared_data / 'mpii_eval'
  gt_file = folder / 'gt_valid_tompson_format.mat'
  newell = detections.load_detections(folder / 'newell.h5')
  tompson, scores = detections.load_detections(folder / 'tompson.h5',
                                              return_scores=True)
  assert newell.shape == tompson.shape == (2958, 16, 2) and scores is None
  # Right orientation (no x/y or person/joint mix-up): high head-top PCKh.
  assert _pckh_per_joint(newell, gt_file)[9] > 95
  assert _pckh_per_joint(tompson, gt_file)[9] > 95
  part, visible = detections.load_detections(folder / 'valid.h5',
                                            return_scores=True)
  gt = scipy.io.loadmat(gt_file)
  present = gt['jnt_missing'].T == 0
  # valid.h5 rounds to whole pixels and differs on a few joints.
  diff = np.abs(part - gt['pos_gt_src'].transpose(2, 0, 1))[present]
  assert np.mean(diff.max(-1) <= 1.0) > 0.95
  with h5py.File(folder / 'valid.h5') as f:
    np.testing.assert_array_equal(visible, f['visible'][()])


def test_formats_agree(shared_data, tmp_path):
  raw = scipy.io.loadmat(shared_data / 'mpii_eval' / 'bearpaw-hg_s8_b1.mat')
  preds = np.asarray(raw['preds'], np.float32)
  scores = np.random.default_rng(5).uniform(size=preds.shape[:2])
  ref = detections.load_detections(shared_data / 'mpii_eval' /
                                  'bearpaw-hg_s8_b1.mat')
  np.save(tmp_path / 'a.npy', preds)
  np.savez(tmp_path / 'b.npz', preds=preds, scores=scores)
  (tmp_path / 'c.json').write_text(json.dumps(preds.tolist()))
  (tmp_path / 'd.json').write_text(
      json.dumps({'preds': preds.tolist(), 'scores': scores.tolist()}))
  (tmp_path / 'e.json').write_text(json.dumps(
      [{'joints': p.tolist(), 'joints_vis': [1] * 16} for p in preds[:5]]))
  scipy.io.savemat(tmp_path / 'f.mat',
                   {'pos_pred_src': preds.transpose(1, 2, 0)})
  with h5py.File(tmp_path / 'g.h5', 'w') as f:
    f['preds'] = preds.transpose(2, 1, 0)  # A column-major (MATLAB) dump.
  for name in 'a.npy', 'b.npz', 'c.json', 'd.json', 'f.mat', 'g.h5':
    np.testing.assert_array_equal(detections.load_detections(tmp_path / name),
                                  ref, err_msg=name)
  for name in 'b.npz', 'd.json':
    _, got = detections.load_detections(tmp_path / name, return_scores=True)
    np.testing.assert_allclose(got, scores, rtol=1e-6, err_msg=name)
  joints, vis = detections.load_detections(tmp_path / 'e.json',
                                          return_scores=True)
  np.testing.assert_array_equal(joints, ref[:5])
  np.testing.assert_array_equal(vis, np.ones((5, 16)))


def test_bad_files_raise(tmp_path):
  cases = {
      'short.npy': lambda p: np.save(p, np.zeros((3, 15, 2))),
      'noname.npz': lambda p: np.savez(p, a=np.zeros((3, 16, 2)), b=np.ones(3)),
      'garbage.mat': lambda p: p.write_bytes(b'not a mat file at all' * 10),
      'garbage.h5': lambda p: p.write_bytes(b'not hdf5'),
      'ragged.json': lambda p: p.write_text('[[[1, 2]], [[1, 2], [3, 4]]]'),
      'badscores.npz': lambda p: np.savez(p, preds=np.zeros((3, 16, 2)),
                                          scores=np.zeros((3, 15))),
      'x.txt': lambda p: p.write_text('1 2'),
  }
  for name, write in cases.items():
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=name):
      detections.load_detections(path, return_scores=True)
  bad = tmp_path / 'badfield.json'
  bad.write_text(json.dumps({'preds': np.zeros((4, 16, 3)).tolist()}))
  with pytest.raises(ValueError, match="badfield.json: field 'preds' has"):
    detections.load_detections(bad)
  with pytest.raises(errors.InputError, match='does not exist'):
    detections.load_detections(tmp_path / 'missing.mat')
