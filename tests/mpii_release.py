"""Test helper: an MPII manual-download folder (JSON route) from ../shared/data's samples."""

import json
import pathlib
import shutil


def copy_json_release(shared_data: pathlib.Path, root: pathlib.Path) -> list[dict]:
  """Writes `root/images/*.jpg`, `train.json` and `valid.json`; returns the annotations."""
  samples = shared_data / 'mpii_samples'
  (root / 'images').mkdir(parents=True)
  for f in samples.glob('*.jpg'):
    shutil.copy(f, root / 'images' / f.name)
  shutil.copy(samples / 'test_mpii.json', root / 'train.json')
  shutil.copy(samples / 'test_mpii.json', root / 'valid.json')
  return json.loads((samples / 'test_mpii.json').read_text())
