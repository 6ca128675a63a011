"""Detection files users bring, evaluated end to end and joined by identity.

MPII: a JSON-route release of the real 2958 validation persons on blank
images (`mpii_release.write_validation_release`), `--mode=eval` as a user
runs it with bearpaw's published `bearpaw-hg_s8_b1.mat`: the "2D detections"
PCKh row must be the published hg_s8 table. No stage is trained: without a
regressor the evaluation scores the detections alone.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np

import mpii_release  # tests/mpii_release.py

from configs import mpii_deepskeleton
from deepskeleton_jax.data import registry
from deepskeleton_jax.experiment import config_lib

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
