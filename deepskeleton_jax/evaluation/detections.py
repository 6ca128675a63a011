"""Published 2D detection files, read and joined to the examples they detect.

The evaluator matches hypotheses against detections from a file
(`config.eval.detections=<path>`, `open_detections`). Two kinds:

- Rows without names (`load_detections`): the formats of the common MPII
  releases (bearpaw/pytorch-pose and HRNet `.mat`, Newell's and Tompson's
  `.h5`, the hourglass `valid.h5`, `.npz`/`.npy`, JSON), recognised by their
  field names. Row i is the i-th person of the order the dataset recorded
  for the split (`example_format.ROW_ORDER`; MPII validation: the 2958
  persons in the official evaluation's order), joined by the examples' key
  '<image name>#<person>' (`RowsInOrder`), never by their position in the
  split. A file with fewer or more rows than that order is refused.
- VideoPose3D's Human3.6M files (`videopose3d.py`): named by subject,
  action, camera and frame.

Pixel conventions (`eval.detections_convention`, `CONVENTIONS`): 'auto' reads
the MPII formats as 'one_based' (MATLAB/Torch: pixel k's centre at k), what
the official MPII evaluation does with them (it compares them unchanged with
its 1-based ground truth `pos_gt_src`), and VideoPose3D's as 'continuous'
(this project's: pixel k spans [k, k + 1); the labels' camera projection).
'zero_based' (pixel k's centre at k, 0-based) adds 0.5.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import h5py
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax.data import example_format
from deepskeleton_jax.data import mat_files
from deepskeleton_jax.evaluation import videopose3d
from deepskeleton_jax.geometry import skeleton

# Pixels added to a file's coordinates to reach the continuous convention.
CONVENTIONS: dict[str, float] = {'one_based': -0.5, 'zero_based': 0.5, 'continuous': 0.0}


_COORD_FIELDS = ('preds', 'part', 'pos_pred_src', 'joints')
_SCORE_FIELDS = ('scores', 'maxvals', 'visible', 'joints_vis')
_READERS = ('.mat', '.h5', '.hdf5', '.npz', '.npy', '.json')


def _read_fields(path: str, ext: str) -> dict[str, Any]:
  """Reads a detection file into {field name: array-like}."""
  if ext == '.mat':
    try:
      data = mat_files.load(path)  # checked first: scipy can crash on a damaged file
    except NotImplementedError:  # MATLAB v7.3 files are HDF5.
      return _read_fields(path, '.h5')
    return {k: v for k, v in data.items() if not k.startswith('__')}
  if ext in ('.h5', '.hdf5'):
    with h5py.File(path, 'r') as f:
      return {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
  if ext == '.npz':
    with np.load(path, allow_pickle=False) as data:
      return dict(data)
  if ext == '.npy':
    return {'array': np.load(path, allow_pickle=False)}
  with open(path) as f:  # '.json', the last of _READERS.
    data = json.load(f)
  if isinstance(data, dict):
    return data
  if isinstance(data, list) and data and all(isinstance(p, dict) for p in data):
    fields = {}
    for name in ('joints', 'preds') + _SCORE_FIELDS:
      if all(name in p for p in data):
        fields[name] = [p[name] for p in data]
    return fields
  return {'preds': data}


def _as_float(path: str, name: str, value: Any) -> np.ndarray:
  try:
    return np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise errors.InputError(f'{path}: field {name!r} is not a numeric array '
                            f'({e})') from e


def load_detections(
    path: str | os.PathLike, *, num_joints: int = skeleton.NUM_JOINTS,
    return_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
  """Reads published 2D detections (or annotations) into [N, K, 2].

  Coordinates are returned as stored (image pixels, joints in the file's
  order); the formats found in practice:
  - `.mat` with `preds` [N, K, 2] (bearpaw/pytorch-pose and HRNet results,
    0-based pixels) or `pos_pred_src` [K, 2, N] (the MPII evaluation format);
    MATLAB v7.3 (HDF5) files are read as `.h5`.
  - `.h5`/`.hdf5` with `preds` or `part`. Arrays written column-major by
    MATLAB/Torch appear as [2, K, N] and are transposed. Newell's `newell.h5`:
    `preds` [N, 16, 2] in MPII joint order, 1-based Torch pixels. Tompson's
    `tompson.h5`: `preds` [2, 16, N] (MATLAB order), MPII joint order; its
    pelvis and thorax are placeholders, not predictions, and (0, 0) marks the
    joints missing from the ground truth. The hourglass annotation file
    `valid.h5`: `part` [N, 16, 2] with (0, 0) for missing joints and
    `visible` [N, 16] (MPII's occlusion flag).
  - `.npz` with one of the fields above (or a single array), `.npy` [N, K, 2].
  - `.json`: a list of per-person K x 2 lists, {"preds": ...} (optionally with
    "scores"), or a list of per-person dicts with "joints" (and "joints_vis",
    the common MPII JSON annotation format).

  Args:
    path: the file; its extension selects the reader.
    num_joints: expected K.
    return_scores: also return the per-joint scores.

  Returns:
    float32 [N, K, 2]; with `return_scores`, a pair (joints, scores) where
    scores is float32 [N, K] from the first present field of `scores`,
    `maxvals`, `visible`, `joints_vis` (a confidence or a 0/1 visibility
    flag), or None when the file has none.

  Raises:
    errors.InputError: `path` does not exist, cannot be read, has no
      coordinate field, or a field has the wrong shape; the message names the
      file and field.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.InputError(f'detection file {path} does not exist')
  ext = os.path.splitext(path)[1].lower()
  if ext not in _READERS:
    raise errors.InputError(f'{path}: unsupported detection file type {ext!r}; '
                            f'expected one of {_READERS}')
  try:
    fields = _read_fields(path, ext)
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Each reader fails its own way (MatReadError, OSError, JSONDecodeError..).
    raise errors.InputError(f'{path}: not a readable {ext} file ({e})') from e
  name, joints, transposed = _coordinates(path, fields, num_joints)
  if not return_scores:
    return joints
  return joints, _scores(path, fields, name, joints.shape[0], num_joints, transposed)


def _coordinates(path: str, fields: dict[str, Any], k: int) -> tuple[str, np.ndarray, bool]:
  """The coordinate field: (its name, [N, K, 2] float32, whether it was transposed)."""
  name = next((n for n in _COORD_FIELDS if n in fields), None)
  if name is None:
    arrays = [n for n in fields if n not in _SCORE_FIELDS]
    if len(arrays) != 1:
      raise errors.InputError(f'{path}: no detection field; expected one of '
                              f'{_COORD_FIELDS}, found {sorted(fields)}')
    name = arrays[0]
  coords = _as_float(path, name, fields[name])
  transposed = False
  if coords.ndim == 3 and coords.shape[1:] == (k, 2):
    pass
  elif coords.ndim == 3 and coords.shape[:2] == (2, k):  # Column-major dump.
    coords, transposed = coords.transpose(2, 1, 0), True
  elif coords.ndim == 3 and coords.shape[:2] == (k, 2):  # MPII eval layout.
    coords, transposed = coords.transpose(2, 0, 1), True
  else:
    raise errors.InputError(f'{path}: field {name!r} has shape {coords.shape}; '
                            f'expected [N, {k}, 2] (or [2, {k}, N] / [{k}, 2, N])')
  return name, coords.astype(np.float32), transposed


def _scores(path: str, fields: dict[str, Any], coord_name: str, n: int, k: int,
            transposed: bool) -> np.ndarray | None:
  """The first score/visibility field as [N, K] float32, or None."""
  score_name = next((s for s in _SCORE_FIELDS if s in fields), None)
  if score_name is None:
    return None
  scores = _as_float(path, score_name, fields[score_name])
  if scores.ndim == 3 and scores.shape[-1] == 1:
    scores = scores[..., 0]
  if scores.ndim == 2 and transposed and scores.shape == (k, n):
    scores = scores.T
  if scores.shape != (n, k):
    raise errors.InputError(f'{path}: field {score_name!r} has shape {scores.shape}; '
                            f'expected [{n}, {k}] to match {coord_name!r}')
  return scores.astype(np.float32)


class RowsInOrder:
  """A file of unnamed rows: row i is person i of a recorded order of keys."""

  def __init__(self, path: str, joints: np.ndarray, scores: np.ndarray | None,
               order: list[str], offset: float):
    """Joins the rows to the order's keys.

    Args:
      path: the file (for messages).
      joints: [N, 16, 2] as stored; scores: [N, 16] or None.
      order: the N example keys ('<image name>#<person>') the rows follow.
      offset: pixels added to every coordinate (the pixel convention).

    Raises:
      errors.InputError: N differs from the order's length; the message
        names the first key without a row, or the first surplus row.
    """
    n, m = len(joints), len(order)
    if n < m:
      raise errors.InputError(
          f'{path}: {n} rows for the {m} persons of the order they follow; no row '
          f'for {order[n]} (the first key without one) and after it')
    if n > m:
      raise errors.InputError(
          f'{path}: {n} rows for the {m} persons of the order they follow; rows '
          f'{m} to {n - 1} are surplus (no person)')
    self.path = path
    self.has_scores = scores is not None
    self._joints = joints.astype(np.float32) + np.float32(offset)
    self._scores = scores
    self._row = {key: i for i, key in enumerate(order)}

  def lookup(self, ids: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """The detections of examples named by their ids.

    Args:
      ids: `image_name` (str [b]) and `frame` (int [b], the person index).

    Returns:
      (joints [b, 16, 2] float32 image pixels, continuous convention;
      scores [b, 16] or None).

    Raises:
      errors.InputError: naming the first example whose key the order lacks.
    """
    keys = [example_format.person_key(n, f) for n, f in zip(ids['image_name'], ids['frame'])]
    missing = next((k for k in keys if k not in self._row), None)
    if missing is not None:
      raise errors.InputError(
          f'{self.path}: example {missing} is not among the persons whose order '
          'the rows follow (a split built from other annotation files?)')
    rows = np.array([self._row[k] for k in keys], np.int64)
    return self._joints[rows], None if self._scores is None else self._scores[rows]


def open_detections(path: str | os.PathLike, convention: str,
                    row_order: Callable[[], list[str] | None]
                    ) -> RowsInOrder | videopose3d.VideoPose3DFile:
  """Reads a detection file for joining to examples by key.

  Args:
    path: the file (module docstring: VideoPose3D `.npz` or an MPII format).
    convention: 'auto' or a key of `CONVENTIONS`.
    row_order: called for files of unnamed rows: the example keys of the
      evaluated split in the order the rows follow, or None if the dataset
      records none.

  Returns:
    An object whose `lookup(ids)` gives ([b, 16, 2] continuous image pixels,
    scores [b, 16] or None) for a batch's id fields.

  Raises:
    errors.ConfigError: an unknown convention.
    errors.InputError: an unreadable file, or rows that cannot be joined.
  """
  path = os.fspath(path)
  if convention != 'auto' and convention not in CONVENTIONS:
    raise errors.ConfigError(f"eval.detections_convention={convention!r}: expected 'auto' "
                             f'or one of {sorted(CONVENTIONS)}')
  if os.path.isfile(path) and videopose3d.is_videopose3d(path):
    return videopose3d.VideoPose3DFile(
        path, CONVENTIONS['continuous' if convention == 'auto' else convention])
  joints, scores = load_detections(path, return_scores=True)
  order = row_order()
  if order is None:
    raise errors.InputError(
        f'{path}: its rows carry no names; they are joined to the persons of a '
        'recorded order (MPII validation, builder version 1.2.0 or later), and the '
        'evaluated split records none (Human3.6M: use a VideoPose3D file)')
  return RowsInOrder(path, joints, scores, order,
                     CONVENTIONS['one_based' if convention == 'auto' else convention])
