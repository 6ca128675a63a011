"""Detection files users bring, evaluated end to end and joined by identity.

MPII: a JSON-route release of the real 2958 validation persons on blank
images (`mpii_release.write_validation_release`), `--mode=eval` as a user
runs it with bearpaw's published `bearpaw-hg_s8_b1.mat`: the "2D detections"
PCKh row must be the published hg_s8 table. Human3.6M: a fake release and
VideoPose3D-format files written from its labels with a known pixel offset:
the "2D detections" pixel error must be that offset. No stage is trained:
without a regressor the evaluation scores the detections alone.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import mpii_release  # tests/mpii_release.py

from configs import h36m_deepskeleton
from configs import mpii_deepskeleton
from deepskeleton_jax import errors
from deepskeleton_jax.data import registry
from deepskeleton_jax.evaluation import evaluate
from deepskeleton_jax.experiment import config_lib

fake_release = registry.load_module('human36m', 'fake_release')
h36m_cameras = registry.load_module('human36m', 'h36m_cameras')

REPO = pathlib.Path(__file__).resolve().parents[1]
# bearpaw/pytorch-pose's published hg_s8 PCKh@0.5 (../shared/data/README.md);
# Mean: the official evaluation's total over all joints but pelvis and thorax.
PUBLISHED_HG_S8 = {'Head': 96.79, 'Sho.': 95.19, 'Elb.': 90.08, 'Wri.': 85.32,
                   'Hip': 87.48, 'Knee': 84.26, 'Ank.': 80.73}


def _official_total(preds: np.ndarray, gt_file: pathlib.Path) -> tuple[float, float]:
  """(total, mean of the 14 joints): the official evaluation on the .mat files."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  gt = scipy.io.loadmat(gt_file)
  pos = gt['pos_gt_src'].transpose(2, 0, 1)
  visible = gt['jnt_missing'].T == 0
  boxes = gt['headboxes_src']
  head = 0.6 * np.linalg.norm(boxes[1] - boxes[0], axis=0)
  correct = (np.linalg.norm(preds - pos, axis=-1) / head[:, None] <= 0.5) & visible
  keep = np.ones(16, bool)
  keep[[6, 7]] = False
  per_joint = 100 * correct.sum(0) / visible.sum(0)
  return 100 * correct[:, keep].sum() / visible[:, keep].sum(), per_joint[keep].mean()


def test_mpii_eval_with_bearpaw_hg_s8_reproduces_the_published_table(shared_data, tmp_path):
  manual, data_dir, workdir = tmp_path / 'manual', tmp_path / 'tfds', tmp_path / 'work'
  mpii_release.write_validation_release(shared_data, manual)
  overrides = {'data.data_dir': str(data_dir), 'data.manual_dir': str(manual),
               'data.builder_kwargs.crop_size': 32, 'data.input_size': 32,
               'eval.batch_size': 1024, 'eval.num_figures': 0}
  config = mpii_deepskeleton.get_config()
  for key, value in overrides.items():
    group, *rest = key.split('.')
    target = config[group]
    for name in rest[:-1]:
      target = target[name]
    target[rest[-1]] = value
  registry.prepare(config_lib.finalize(config).data)  # what --mode=prepare runs
  detections = shared_data / 'mpii_eval' / 'bearpaw-hg_s8_b1.mat'
  run = subprocess.run(
      [sys.executable, str(REPO / 'run.py'), '--mode=eval',
       f'--config={REPO / "configs" / "mpii_deepskeleton.py"}', f'--workdir={workdir}',
       f'--config.eval.detections={detections}']
      + [f'--config.{k}={v}' for k, v in overrides.items()],
      cwd=tmp_path, capture_output=True, text=True, timeout=1200)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((workdir / 'eval' / 'results.json').read_text())
  row = results['pckh']['2D detections']
  assert row['persons'] == 2958 and results['num_examples'] == 2958
  for group, published in PUBLISHED_HG_S8.items():
    assert abs(row['groups'][group] - published) < 0.1, (group, row['groups'])
  import scipy.io  # pylint: disable=g-import-not-at-top
  preds = scipy.io.loadmat(detections)['preds']
  total, mean14 = _official_total(preds, shared_data / 'mpii_eval' / 'gt_valid_tompson_format.mat')
  assert abs(row['groups']['Mean'] - total) < 0.1 and abs(row['mean_joints'] - mean14) < 0.1
  assert '2D detections' in (workdir / 'eval' / 'report.md').read_text()


# Test takes under the release's long spellings (VideoPose3D writes 'Photo 1',
# 'WalkDog 1'), two cameras (indices 0 and 2 of VideoPose3D's four).
_H36M_ACTIONS = {'S1': ('Walking 1',), 'S9': ('Walking', 'TakingPhoto 1'),
                 'S11': ('WalkingDog 1',)}
_H36M_CAMS = ('54138969', '58860488')
_VP3D_CAMS = ('54138969', '55011271', '58860488', '60457274')
_VP3D_KEPT = [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]  # its 17 joints
_H36M_OF_OURS = [3, 2, 1, 6, 7, 8, 0, 13, 14, 15, 27, 26, 25, 17, 18, 19]   # our 16 (MPII order)


@pytest.fixture(scope='module')
def h36m_built(tmp_path_factory):
  root = tmp_path_factory.mktemp('h36m_vp3d')
  poses = fake_release.make_release(root / 'manual', _H36M_ACTIONS, _H36M_CAMS, num_frames=6)
  config = h36m_deepskeleton.get_config()
  config.data.update(data_dir=str(root / 'tfds'), manual_dir=str(root / 'manual'), input_size=32)
  config.data.builder_kwargs = {
      'train_subjects': ('S1',), 'test_subjects': ('S9', 'S11'), 'cameras': _H36M_CAMS,
      'train_every': 3, 'test_every': 2, 'crop_size': 32}
  config.eval.update(num_figures=0, batch_size=8)
  registry.prepare(config_lib.finalize(config).data)
  return config, poses, root


def _write_videopose3d(path, poses, offset, joints, metadata, drop=()):
  """A VideoPose3D file from the release's labels: 4 cameras, 2 frames past the poses."""
  positions = {}
  for (subject, action), world in poses.items():
    if (subject, action) in drop:
      continue
    world = np.concatenate([world, world[-2:]]).astype(np.float64)
    cams = []
    for cam_id in _VP3D_CAMS:
      cam = h36m_cameras.get_camera(subject, cam_id)
      cams.append((cam.project(cam.world_to_camera(world))[:, joints] + offset).astype('float32'))
    name = action.replace('TakingPhoto', 'Photo').replace('WalkingDog', 'WalkDog')
    positions.setdefault(subject, {})[name] = cams
  positions['S5'] = {'Walking': [np.zeros((3, len(joints), 2), np.float32)] * 4}  # surplus
  np.savez_compressed(path, positions_2d=positions, metadata=metadata)


@pytest.mark.parametrize('variant', ['cpn_ft_h36m_dbb', 'sh_ft_h36m'])
def test_h36m_videopose3d_file_gives_the_offset_it_was_written_with(h36m_built, variant):
  config, poses, root = h36m_built
  offset = np.array([3.0, -4.0])
  path = root / f'data_2d_h36m_{variant}.npz'
  if variant.startswith('sh'):  # 16 joints in MPII's order, VideoPose3D's SH metadata
    _write_videopose3d(path, poses, offset, _H36M_OF_OURS, {
        'num_joints': 16, 'keypoints_symmetry': [[3, 4, 5, 13, 14, 15], [0, 1, 2, 10, 11, 12]]})
  else:
    _write_videopose3d(path, poses, offset, _VP3D_KEPT, {
        'layout_name': 'h36m', 'num_joints': 17,
        'keypoints_symmetry': [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]})
  config = config_lib.finalize(config.copy_and_resolve_references())
  config.eval.detections = str(path)
  results = evaluate.evaluate(config, str(root / f'work_{variant}'))
  # 3 takes x 2 cameras x frames 0, 2, 4.
  assert results['num_examples'] == 18
  np.testing.assert_allclose(results['error_2d_px']['2D detections'], 5.0, atol=1e-3)


def test_h36m_videopose3d_file_without_a_take_names_its_first_example(h36m_built):
  config, poses, root = h36m_built
  path = root / 'data_2d_h36m_gt.npz'
  _write_videopose3d(path, poses, 0.0, _VP3D_KEPT, {'num_joints': 17},
                     drop=[('S11', 'WalkingDog 1')])
  config = config_lib.finalize(config.copy_and_resolve_references())
  config.eval.detections = str(path)
  with pytest.raises(errors.InputError,
                     match=r"no detections for example S11/WalkingDog 1\.\d+/[024] "
                           r"\(positions_2d\['S11'\]\['WalkDog 1'\]: no such take\)"):
    evaluate.evaluate(config, str(root / 'work_missing'))
  assert not (root / 'work_missing' / 'eval' / 'results.json').exists()
