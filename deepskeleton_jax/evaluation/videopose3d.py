"""VideoPose3D's 2D detection files for Human3.6M, read by example key.

The files Human3.6M users have (Pavllo et al. 2019,
github.com/facebookresearch/VideoPose3D, DATASETS.md):
`data_2d_h36m_<detector>.npz`, written by `np.savez_compressed` with two
pickled objects:

- `positions_2d`: {subject: {action: [4 arrays [frames, J, 2]]}}, the list
  in VideoPose3D's camera order 54138969, 55011271, 58860488, 60457274; full
  video-frame pixels. Actions are the CDF stems ('Walking 1') with
  'TakingPhoto' and 'WalkingDog' spelled 'Photo' and 'WalkDog' (both
  spellings are accepted on either side here); S11 'Directions' is absent.
  Frame f of an array is frame f of the video and of the pose stream (our
  `frame`); arrays may run past the last pose frame (VideoPose3D trims them,
  so do we: such rows are not an error).
- `metadata`: {'layout_name', 'num_joints', 'keypoints_symmetry'}.

Variants, and how each of our 16 joints (`skeleton.JOINT_NAMES`) is made:

- 17 joints, layout 'h36m' (`gt`, `cpn_ft_h36m_dbb`, `detectron_ft_h36m`;
  the gt file's metadata has no layout_name): Human3.6M's joints 0 1 2 3 6 7 8
  12 13 14 15 17 18 19 25 26 27 (VideoPose3D's `remove_joints`). Each of our
  joints is the one of the same Human3.6M joint as our labels
  (`skeleton.H36M32_TO_SKELETON`): pelvis = hip (0), r/l hip, knee, ankle =
  r/l hip, knee, foot, thorax = thorax (13), upper_neck = neck/nose (14),
  head_top = head (15), shoulders, elbows, wrists alike; their spine (12) is
  unused.
- 16 joints in MPII's order (`sh_pt_mpii`, `sh_ft_h36m`; metadata without
  layout_name, MPII's symmetry): the Stacked Hourglass' output slots, joint j
  = our joint j (our skeleton follows MPII's order). For `sh_ft_h36m`,
  Martinez et al. fine-tuned slots 7, 8 and 9 towards Human3.6M's spine,
  thorax and head (their `SH_NAMES`), so there our thorax and upper_neck
  are read from points about one joint lower than our labels'.
- layout 'coco' (`detectron_pt_coco`): refused; COCO's keypoints have no
  head top, thorax or pelvis.

Pixels: the labels' camera projection (VideoPose3D's `project_to_2d`, the
distortion model the human36m builder uses), i.e. this project's continuous
convention; `eval.detections_convention='auto'` reads them as stored.

The pickled objects are unpickled with numpy's array reconstruction as the
only callables allowed: a file cannot run code.
"""

from __future__ import annotations

import pickle
import zipfile
from typing import Any

import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax.geometry import skeleton

CAMERAS: tuple[str, ...] = ('54138969', '55011271', '58860488', '60457274')
# The 32 Human3.6M joints VideoPose3D keeps, in its 17-joint order.
H36M17_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
H36M17_TO_SKELETON: np.ndarray = np.array(
    [H36M17_JOINTS.index(j) for j in skeleton.H36M32_TO_SKELETON], np.int32)
# (num_joints, layout) -> (our joints from theirs, the metadata's symmetry).
_LAYOUTS = {
    (17, 'h36m'): (H36M17_TO_SKELETON, [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]),
    (16, 'mpii'): (skeleton.MPII_TO_SKELETON, [[3, 4, 5, 13, 14, 15], [0, 1, 2, 10, 11, 12]]),
}
_SPELLINGS = (('TakingPhoto', 'Photo'), ('WalkingDog', 'WalkDog'))
# The only callables a pickled numpy array needs (numpy 1 and 2 module names).
_ARRAY_PARTS = frozenset(
    [(f'numpy.{core}.multiarray', name) for core in ('core', '_core')
     for name in ('_reconstruct', 'scalar')] +
    [(f'numpy.{core}.numeric', '_frombuffer') for core in ('core', '_core')] +
    [('numpy', 'ndarray'), ('numpy', 'dtype')])
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def canonical_action(action: str) -> str:
  """VideoPose3D's spelling of an action ('TakingPhoto 1' -> 'Photo 1')."""
  for long, short in _SPELLINGS:
    action = action.replace(long, short)
  return action


class _ArraysOnly(pickle.Unpickler):
  """Unpickles dicts, lists and numpy arrays, nothing that runs code."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _ARRAY_PARTS:
      raise pickle.UnpicklingError(f'{module}.{name} is not part of a numpy array')
    return super().find_class(module, name)


def is_videopose3d(path: str) -> bool:
  """Whether `path` is an .npz holding `positions_2d` (read nothing else)."""
  if not path.lower().endswith('.npz') or not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return 'positions_2d.npy' in z.namelist()


def _read_member(z: zipfile.ZipFile, name: str, path: str) -> Any:
  """An .npz member: arrays as numpy arrays, pickled objects through `_ArraysOnly`."""
  if f'{name}.npy' not in z.namelist():
    return None
  with z.open(f'{name}.npy') as f:
    version = np.lib.format.read_magic(f)
    if version not in _HEADER_READERS:
      raise errors.InputError(f'{path}: {name} is an .npy of version {version}; '
                              f'expected one of {sorted(_HEADER_READERS)}')
    shape, _, dtype = _HEADER_READERS[version](f)
    if not dtype.hasobject:
      return np.frombuffer(f.read(), dtype).reshape(shape)
    try:
      value = _ArraysOnly(f).load()
    except Exception as e:  # pylint: disable=broad-except
      # Unpickling fails many ways (refused callables, truncated data).
      raise errors.InputError(f'{path}: {name} is not a pickled dict of arrays ({e})') from e
  return value.item() if isinstance(value, np.ndarray) and value.shape == () else value


def _layout(path: str, metadata: Any, num_joints: int) -> np.ndarray:
  """Our joints from the file's: the index array for its layout."""
  metadata = metadata if isinstance(metadata, dict) else {}
  name = metadata.get('layout_name') or {17: 'h36m', 16: 'mpii'}.get(num_joints)
  if (num_joints, name) not in _LAYOUTS:
    raise errors.InputError(
        f'{path}: {num_joints} joints in layout {name!r}; expected 17 in layout '
        "'h36m' (gt, CPN, Detectron fine-tuned) or 16 in MPII's order (Stacked "
        "Hourglass); COCO keypoints lack our head top, thorax and pelvis")
  to_skeleton, symmetry = _LAYOUTS[num_joints, name]
  given = metadata.get('keypoints_symmetry')
  if given is not None and [sorted(map(int, s)) for s in given] != symmetry:
    raise errors.InputError(f'{path}: metadata keypoints_symmetry {given} is not '
                            f"the {name} layout's {symmetry}: another joint order")
  return to_skeleton


class VideoPose3DFile:
  """A VideoPose3D file's detections, looked up by (subject, action, camera, frame)."""

  has_scores = False  # The files hold coordinates only.

  def __init__(self, path: str, offset: float):
    """Reads the file (module docstring).

    Args:
      path: the .npz file.
      offset: pixels added to every coordinate (the pixel convention).

    Raises:
      errors.InputError: not a VideoPose3D file, an unknown joint layout,
        arrays not [frames, J, 2], or two spellings of one action.
    """
    self.path = path
    try:
      with zipfile.ZipFile(path) as z:
        positions = _read_member(z, 'positions_2d', path)
        metadata = _read_member(z, 'metadata', path)
    except (OSError, zipfile.BadZipFile) as e:
      raise errors.InputError(f'{path}: not a readable .npz file ({e})') from e
    if not isinstance(positions, dict):
      raise errors.InputError(f'{path}: positions_2d is not a dict {{subject: {{action: '
                              '[per camera [frames, J, 2]]}}')
    arrays = [(s, a, c, np.asarray(v)) for s, takes in positions.items() for a, cams in
              dict(takes).items() for c, v in enumerate(cams) if v is not None]
    joints = {v.shape[1] if v.ndim == 3 else -1 for _, _, _, v in arrays}
    if len(joints) != 1 or -1 in joints or any(v.shape[2] != 2 for *_, v in arrays):
      raise errors.InputError(f'{path}: positions_2d arrays are not all [frames, J, 2] '
                              f'with one J (found {sorted(joints)} joints)')
    to_skeleton = _layout(path, metadata, joints.pop())
    self._takes: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for subject, action, cam, value in arrays:
      take = self._takes.setdefault((str(subject), canonical_action(str(action))), {})
      if cam in take:
        raise errors.InputError(f'{path}: {subject} holds {action!r} under both spellings')
      take[cam] = (value[:, to_skeleton].astype(np.float32) + np.float32(offset))

  def lookup(self, ids: dict[str, np.ndarray]) -> tuple[np.ndarray, None]:
    """The detections of examples named by their ids.

    Args:
      ids: `subject`, `action`, `camera` (str [b]) and `frame` (int [b]).

    Returns:
      (joints [b, 16, 2] float32 image pixels, continuous convention; None:
      the files have no scores).

    Raises:
      errors.InputError: naming the first example without a row.
    """
    out = np.zeros((len(ids['frame']), skeleton.NUM_JOINTS, 2), np.float32)
    for i, ids_i in enumerate(zip(ids['subject'], ids['action'], ids['camera'], ids['frame'])):
      subject, action, cam, frame = tuple(str(v) for v in ids_i[:3]) + (int(ids_i[3]),)
      take = self._takes.get((subject, canonical_action(action)), {})
      array = take.get(CAMERAS.index(cam) if cam in CAMERAS else -1)
      if array is None or not 0 <= frame < len(array):
        have = 'no such take' if not take else (
            'no such camera' if array is None else f'{len(array)} frames')
        raise errors.InputError(
            f'{self.path}: no detections for example {subject}/{action}.{cam}/{frame} '
            f'(positions_2d[{subject!r}][{canonical_action(action)!r}]: {have})')
      out[i] = array[frame]
    return out, None
