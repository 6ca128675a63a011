"""Test helpers: MPII manual-download folders (the JSON route from ../shared/data's
samples) and the official .mat's structs (for scipy.io.savemat)."""

import json
import pathlib
import shutil

import numpy as np

EMPTY = np.zeros((0, 0))  # what the .mat holds for a missing field


def copy_json_release(shared_data: pathlib.Path, root: pathlib.Path) -> list[dict]:
  """Writes `root/images/*.jpg`, `train.json` and `valid.json`; returns the annotations."""
  samples = shared_data / 'mpii_samples'
  (root / 'images').mkdir(parents=True)
  for f in samples.glob('*.jpg'):
    shutil.copy(f, root / 'images' / f.name)
  shutil.copy(samples / 'test_mpii.json', root / 'train.json')
  shutil.copy(samples / 'test_mpii.json', root / 'valid.json')
  return json.loads((samples / 'test_mpii.json').read_text())


def struct_array(dicts: list[dict]) -> np.ndarray:
  """A MATLAB struct array (savemat) with the fields of `dicts[0]`."""
  arr = np.zeros((len(dicts),), dtype=[(k, object) for k in dicts[0]])
  for i, d in enumerate(dicts):
    for k, v in d.items():
      arr[i][k] = v
  return arr


def rect(joints: dict, head, scale, objpos) -> dict:
  """An `annorect` entry: joints {MPII id: (x, y)}, head box, scale, objpos (x, y)."""
  points = struct_array([
      {'id': j, 'x': x, 'y': y, 'is_visible': v}
      for j, (x, y), v in zip(joints, joints.values(), ('1', EMPTY, 0, 1))
  ]) if joints else EMPTY
  return {'x1': head[0], 'y1': head[1], 'x2': head[2], 'y2': head[3],
          'scale': scale, 'objpos': {'x': objpos[0], 'y': objpos[1]}
                                     if objpos else EMPTY,
          'annopoints': {'point': points} if joints else EMPTY}
