"""Test helpers: MPII manual-download folders (the JSON route from ../shared/data's
samples, the 2958 validation persons on blank images) and the official .mat's
structs (for scipy.io.savemat)."""

import json
import os
import pathlib
import shutil

import h5py
import numpy as np
from PIL import Image
import scipy.io

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


def validation_annotations(shared_data: pathlib.Path) -> list[dict]:
  """The 2958 validation persons in the official order, as HRNet's valid.json writes them.

  Joints and visibility from the official `gt_valid_tompson_format.mat`
  (`pos_gt_src`, 1 - `jnt_missing`); image names, centre and scale from
  `valid.h5` (whose centre is moved down by 15 x scale and scale x 1.25, the
  hourglass practice, undone here).
  """
  folder = shared_data / 'mpii_eval'
  gt = scipy.io.loadmat(folder / 'gt_valid_tompson_format.mat')
  joints = gt['pos_gt_src'].transpose(2, 0, 1)
  visible = 1 - gt['jnt_missing'].T
  with h5py.File(folder / 'valid.h5', 'r') as f:
    names = [n.decode() for n in f['imgname'][()]]
    scale = f['scale'][()] / 1.25
    center = f['center'][()] - np.stack([np.zeros_like(scale), 15 * scale], -1)
  return [{'image': names[i], 'center': center[i].tolist(), 'scale': float(scale[i]),
           'joints': joints[i].tolist(), 'joints_vis': visible[i].tolist()}
          for i in range(len(names))]


def write_validation_release(shared_data: pathlib.Path, root: pathlib.Path) -> list[dict]:
  """An MPII JSON-route folder of the 2958 validation persons on blank images.

  Writes `valid.json` (`validation_annotations`), `train.json` (the first two
  validation persons: the build needs training images), `gt_valid.mat` (the
  official evaluation file, as HRNet ships it) and one black JPEG per image,
  its size holding the image's persons (rounded up to 64 px; one file per
  size, hard-linked under each name).

  Returns:
    The validation annotations written.
  """
  annotations = validation_annotations(shared_data)
  (root / 'images').mkdir(parents=True)
  extent = {}
  for a in annotations:
    corner = np.max(np.concatenate([a['joints'], [a['center']]]), axis=0) + 1
    extent[a['image']] = np.maximum(extent.get(a['image'], 0), corner)
  blanks = {}
  for name, (w, h) in extent.items():
    size = (int(-(-w // 64) * 64), int(-(-h // 64) * 64))
    if size not in blanks:
      blanks[size] = root / f'blank_{size[0]}x{size[1]}.jpg'
      Image.new('RGB', size).save(blanks[size])
    os.link(blanks[size], root / 'images' / name)
  (root / 'valid.json').write_text(json.dumps(annotations))
  (root / 'train.json').write_text(json.dumps(annotations[:2]))
  shutil.copy(shared_data / 'mpii_eval' / 'gt_valid_tompson_format.mat', root / 'gt_valid.mat')
  return annotations
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
