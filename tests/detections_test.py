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


# VideoPose3D's 17 Human3.6M joints by name, and ours (MPII order) by name.
_VP3D_NAMES = ('hip', 'r_hip', 'r_knee', 'r_foot', 'l_hip', 'l_knee', 'l_foot', 'spine',
               'thorax', 'neck_nose', 'head', 'l_shoulder', 'l_elbow', 'l_wrist',
               'r_shoulder', 'r_elbow', 'r_wrist')
_OURS_AS_VP3D = ('r_foot', 'r_knee', 'r_hip', 'l_hip', 'l_knee', 'l_foot', 'hip', 'thorax',
                 'neck_nose', 'head', 'r_wrist', 'r_elbow', 'r_shoulder', 'l_shoulder',
                 'l_elbow', 'l_wrist')
_IDS = {'subject': np.array(['S9', 'S1']), 'action': np.array(['Photo 1', 'WalkingDog']),
        'camera': np.array(['58860488', '54138969']), 'frame': np.array([4, 0])}


def _vp3d_file(path, num_joints, metadata):
  rng = np.random.default_rng(0)
  positions = {'S9': {'TakingPhoto 1': [rng.uniform(0, 1000, (6, num_joints, 2))
                                        .astype(np.float32) for _ in range(4)]},
               'S1': {'WalkDog': [rng.uniform(0, 1000, (3, num_joints, 2))
                                  .astype(np.float32) for _ in range(4)]}}
  np.savez_compressed(path, positions_2d=positions, metadata=metadata)
  return positions


def test_videopose3d_joints_cameras_and_spellings(tmp_path):
  path = tmp_path / 'data_2d_h36m_cpn_ft_h36m_dbb.npz'
  pos = _vp3d_file(path, 17, {'layout_name': 'h36m', 'num_joints': 17, 'keypoints_symmetry':
                              [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]})
  source = detections.open_detections(path, 'auto', lambda: None)
  joints, scores = source.lookup(_IDS)
  assert scores is None
  order = [_VP3D_NAMES.index(n) for n in _OURS_AS_VP3D]
  np.testing.assert_array_equal(joints[0], pos['S9']['TakingPhoto 1'][2][4][order])
  np.testing.assert_array_equal(joints[1], pos['S1']['WalkDog'][0][0][order])
  shifted, _ = detections.open_detections(path, 'one_based', lambda: None).lookup(_IDS)
  np.testing.assert_allclose(shifted, joints - 0.5)
  with pytest.raises(errors.InputError, match=r"example S1/WalkingDog\.54138969/3 .*3 frames"):
    source.lookup({**_IDS, 'frame': np.array([4, 3])})
  # Stacked Hourglass files: 16 joints in MPII's (our) order.
  sh = _vp3d_file(tmp_path / 'sh.npz', 16, {'num_joints': 16, 'keypoints_symmetry': [
      [3, 4, 5, 13, 14, 15], [0, 1, 2, 10, 11, 12]]})
  joints, _ = detections.open_detections(tmp_path / 'sh.npz', 'auto', lambda: None).lookup(_IDS)
  np.testing.assert_array_equal(joints[0], sh['S9']['TakingPhoto 1'][2][4])


def test_videopose3d_files_refused(tmp_path):
  _vp3d_file(tmp_path / 'coco.npz', 17, {'layout_name': 'coco', 'num_joints': 17})
  with pytest.raises(errors.InputError, match=r"coco\.npz: 17 joints in layout 'coco'"):
    detections.open_detections(tmp_path / 'coco.npz', 'auto', lambda: None)
  _vp3d_file(tmp_path / 'sym.npz', 17, {'keypoints_symmetry': [[1, 2, 3], [4, 5, 6]]})
  with pytest.raises(errors.InputError, match='another joint order'):
    detections.open_detections(tmp_path / 'sym.npz', 'auto', lambda: None)

  class RunsCode:
    def __reduce__(self):
      return (print, ('a file ran code',))

  np.savez(tmp_path / 'code.npz', positions_2d=np.array(RunsCode(), dtype=object))
  with pytest.raises(errors.InputError, match=r'builtins\.print is not part of a numpy array'):
    detections.open_detections(tmp_path / 'code.npz', 'auto', lambda: None)
  with pytest.raises(errors.ConfigError, match='detections_convention'):
    detections.open_detections(tmp_path / 'coco.npz', 'matlab', lambda: None)
