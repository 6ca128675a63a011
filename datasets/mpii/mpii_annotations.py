"""MPII annotations: the common JSON form, the official .mat, valid.h5, pseudo-3D.

Readers of the `mpii` builder's annotation files (see mpii.py for the layout
and conventions). Coordinates come out continuous (MATLAB's 1-based pixel k
is k - 0.5) and joints in `skeleton.JOINT_NAMES` order. Every reader checks
what it reads and raises one `errors.InputError` naming the file (and the
person and field) with what was expected; nothing is transposed or reshaped
to fit.
"""

import collections
import dataclasses
import json
import pathlib
import reprlib
from typing import Any

import h5py
import numpy as np
import scipy.io

from deepskeleton_jax import errors
from deepskeleton_jax.data import mat_files
from deepskeleton_jax.geometry import skeleton

K = skeleton.NUM_JOINTS


@dataclasses.dataclass
class Person:
  """One annotated person, continuous pixel coordinates."""
  image: str
  person: int
  center: np.ndarray  # [2] annotated centre (objpos), not shifted.
  scale: float
  joints: np.ndarray  # [16, 2]
  visible: np.ndarray  # [16] bool
  head_size: float = 0.0


def read_json(path: pathlib.Path) -> list[Person]:
  """Reads a common-format JSON annotation file (1-based coordinates).

  Raises:
    errors.InputError: naming the file, and the person (its 0-based entry
      index) and field, when the file is not a JSON list of persons with
      `image` (a name), `center` [2], `scale` (a number), `joints` [16, 2] and
      `joints_vis` [16]. Nothing is transposed or reshaped to fit.
  """
  try:
    entries = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise errors.InputError(f'{path}: not a readable JSON file ({e})') from e
  if not isinstance(entries, list):
    raise errors.InputError(f'{path}: expected a JSON list of persons')
  counts = collections.Counter()
  persons = []
  for k, entry in enumerate(entries):
    image, center, scale, joints, visible = _json_fields(path, k, entry)
    persons.append(Person(image, counts[image], center - 0.5, scale,
                          joints[skeleton.MPII_TO_SKELETON] - 0.5,
                          visible[skeleton.MPII_TO_SKELETON] > 0))
    counts[image] += 1
  return persons


_JSON_SHAPES = {'center': (2,), 'scale': (), 'joints': (K, 2), 'joints_vis': (K,)}


def _json_fields(path: pathlib.Path, k: int, entry: Any) -> tuple:
  """(image, center [2], scale, joints [16, 2], joints_vis [16]) of entry `k`."""
  need = ('image',) + tuple(_JSON_SHAPES)
  lacking = [f for f in need if not isinstance(entry, dict) or f not in entry]
  if lacking:
    raise errors.InputError(f'{path}: person {k} (entry {k} of the list) lacks '
                            f'{lacking}; expected the keys {need}')
  image = entry['image']
  if not isinstance(image, str) or not image.strip():
    raise errors.InputError(f'{path}: person {k}: image is {reprlib.repr(image)}; expected the '
                            'image file name (a string)')
  values = []
  for field, shape in _JSON_SHAPES.items():
    where = f'{path}: person {k} (image {image!r}): {field}'
    expected = f'expected {list(shape) or "a number"} (numbers)'
    try:
      value = np.asarray(entry[field])
    except ValueError:  # ragged nested lists
      value = np.asarray(None)
    kinds = 'iufb' if field == 'joints_vis' else 'iuf'  # 0/1 or true/false flags
    if value.dtype.kind not in kinds:
      raise errors.InputError(f'{where} is {reprlib.repr(entry[field])}; {expected}')
    if value.shape != shape:
      raise errors.InputError(f'{where} has shape {list(value.shape)}; {expected}')
    values.append(value.astype(np.float64))
  center, scale, joints, visible = values
  return image, center, float(scale), joints, visible


def _empty(x) -> bool:
  return x is None or (isinstance(x, np.ndarray) and x.size == 0)


def person_from_rect(image: str, index: int, rect) -> Person | None:
  """A Person from a .mat `annorect` entry, or None without annotations."""
  scale, objpos = getattr(rect, 'scale', None), getattr(rect, 'objpos', None)
  annopoints = getattr(rect, 'annopoints', None)
  if _empty(scale) or _empty(objpos) or _empty(annopoints):
    return None
  points = getattr(annopoints, 'point', None)
  if _empty(points):
    return None
  joints = np.zeros((K, 2))
  visible = np.zeros(K, bool)
  for p in np.atleast_1d(points):
    mpii_id = float(p.id)
    if not (mpii_id == int(mpii_id) and 0 <= mpii_id < K):
      raise ValueError(f'joint id {mpii_id:g}; MPII joint ids are 0-{K - 1}')
    j = skeleton.MPII_TO_SKELETON[int(mpii_id)]
    joints[j] = (float(p.x) - 0.5, float(p.y) - 0.5)
    visible[j] = True
  head_size = 0.0
  if all(not _empty(getattr(rect, f, None)) for f in ('x1', 'y1', 'x2', 'y2')):
    head_size = 0.6 * float(np.hypot(float(rect.x2) - float(rect.x1),
                                     float(rect.y2) - float(rect.y1)))
  center = np.array([float(objpos.x), float(objpos.y)]) - 0.5
  return Person(image, index, center, float(scale), joints, visible, head_size)


def read_mat(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads the official .mat: (annolist [N] of structs, img_train [N])."""
  mat_files.check(path)  # scipy can crash on a damaged file
  try:
    mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    release = mat['RELEASE']
    annolist = np.atleast_1d(release.annolist)
    img_train = np.atleast_1d(np.asarray(release.img_train)).astype(int)
  except Exception as e:  # pylint: disable=broad-except
    # scipy raises many kinds of errors on damaged files; name the file.
    raise errors.InputError(f'{path}: not the MPII annotation .mat (a struct RELEASE '
                            f'with annolist and img_train) ({type(e).__name__}: {e})'
                            ) from e
  if img_train.shape != annolist.shape:
    raise errors.InputError(f'{path}: RELEASE.img_train has shape {list(img_train.shape)}; '
                            f'expected one flag per annolist entry, [{len(annolist)}]')
  return annolist, img_train


def read_valid_h5(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a hourglass-format valid.h5 (index, person, imgname, part, normalize)."""
  try:
    with h5py.File(path, 'r') as f:
      out = {k: f[k][()] for k in ('index', 'person', 'imgname', 'part',
                                   'normalize')}
  except (OSError, KeyError) as e:
    raise errors.InputError(f'{path}: expected an HDF5 file with index, person, '
                     f'imgname, part, normalize ({e})') from e
  out['imgname'] = np.array([n.decode() if isinstance(n, bytes) else str(n)
                             for n in out['imgname']])
  return out


def _image_persons(annolist: np.ndarray, i: int, mat_path: pathlib.Path
                   ) -> list[Person | None]:
  """Every `annorect` person of image i (0-based); None where unannotated.

  Raises:
    errors.InputError: naming the entry (1-based, as MATLAB) when it is
      malformed.
  """
  where = f'{mat_path}: annolist({i + 1})'
  p = None
  try:
    name, rects = annolist[i].image.name, annolist[i].annorect
    if not isinstance(name, str):
      raise TypeError(f'image.name is {reprlib.repr(name)}, not a file name')
    rects = [] if _empty(rects) else np.atleast_1d(rects)
    persons = []
    for p, rect in enumerate(rects):
      persons.append(person_from_rect(name, p, rect))
    return persons
  except (AttributeError, TypeError, ValueError, IndexError) as e:
    where += '' if p is None else f'.annorect({p + 1})'
    raise errors.InputError(
        f'{where} is malformed ({type(e).__name__}: {e}); expected image.name and annorect '
        'entries with scale, objpos.x/.y and annopoints.point (id, x, y), as the official '
        'release') from None


def mat_persons(annolist: np.ndarray, img_train: np.ndarray,
                valid: dict[str, np.ndarray], mat_path: pathlib.Path,
                valid_path: pathlib.Path) -> tuple[list[Person], list[Person]]:
  """(train, validation) persons of the .mat route (see `_image_persons`)."""
  valid_pairs = [(int(i), int(p)) for i, p in zip(valid['index'],
                                                  valid['person'])]
  validation = []
  for i, p in valid_pairs:
    persons = _image_persons(annolist, i, mat_path) if 0 <= i < len(annolist) else []
    person = persons[p] if 0 <= p < len(persons) else None
    if person is None:
      raise errors.InputError(f'{valid_path}: image {i} person {p} has no annotated '
                              f'person in {mat_path} (mismatched files?)')
    validation.append(person)
  held_out = set(valid_pairs)
  train = []
  for i in np.flatnonzero(img_train == 1):
    for p, person in enumerate(_image_persons(annolist, int(i), mat_path)):
      if (i, p) not in held_out and person is not None:
        train.append(person)
  return train, validation


def _median_distance(joints: np.ndarray, visible: np.ndarray, other: np.ndarray,
                     other_visible: np.ndarray) -> float:
  """Median over the joints annotated in both of the larger |dx|, |dy| (inf if none)."""
  both = visible & other_visible
  if not both.any():
    return np.inf
  return float(np.median(np.abs(other[both] - joints[both]).max(axis=-1)))


def attach_head_sizes(persons: list[Person], valid: dict[str, np.ndarray]
                      ) -> int:
  """Sets head sizes from valid.h5 `normalize`; returns how many matched.

  A JSON person matches the valid.h5 entry of the same image whose joints
  agree best, within 2 px (valid.h5 rounds them) in the median over the
  joints annotated in both (a median: the official ground truth holds a
  zero coordinate for 10 validation persons where valid.h5 has a value).
  """
  by_image = collections.defaultdict(list)
  for k, name in enumerate(valid['imgname']):
    by_image[name].append(k)
  matched = 0
  for person in persons:
    best, best_err = None, 2.0
    for k in by_image.get(person.image, ()):
      err = _median_distance(person.joints, person.visible, valid['part'][k] - 0.5,
                             np.any(valid['part'][k] > 0, axis=-1))
      if err < best_err:
        best, best_err = k, err
    if best is not None:
      person.head_size = float(valid['normalize'][best])
      matched += 1
  return matched


def read_pseudo_3d(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads '<image>#<person>' -> [16, 3] arrays from an .npz file."""
  try:
    with np.load(path) as data:
      out = {k: np.asarray(data[k], np.float32) for k in data.files}
  except (OSError, ValueError) as e:
    raise errors.InputError(f'{path}: not a readable .npz of pseudo-3D joints ({e})'
                     ) from e
  for key, value in out.items():
    if value.shape != (K, 3) or '#' not in key:
      raise errors.InputError(f'{path}: entry {key!r} has shape {value.shape}; '
                       "expected keys '<image name>#<person index>' with "
                       f'[{K}, 3] arrays (mm)')
  return out


def read_gt_valid(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads the official evaluation file (`gt_valid.mat`).

  Returns:
    {'joints': [N, 16, 2] continuous pixels (`pos_gt_src` - 0.5), 'visible':
    [N, 16] (`jnt_missing` == 0), 'head_size': [N] 0.6 x the diagonal of
    `headboxes_src`}.
  """
  mat_files.check(path)  # scipy can crash on a damaged file
  try:
    mat = scipy.io.loadmat(str(path))
    pos = np.asarray(mat['pos_gt_src'], np.float64).transpose(2, 0, 1)
    missing = np.asarray(mat['jnt_missing']).T
    boxes = np.asarray(mat['headboxes_src'], np.float64)
    head = 0.6 * np.linalg.norm(boxes[1] - boxes[0], axis=0)
  except Exception as e:  # pylint: disable=broad-except
    # scipy raises many kinds of errors on damaged files; name the file.
    raise errors.InputError(f'{path}: not the MPII evaluation .mat (pos_gt_src '
                            f'[16, 2, N], jnt_missing, headboxes_src [2, 2, N]) '
                            f'({type(e).__name__}: {e})') from e
  if pos.shape[1:] != (K, 2) or missing.shape != pos.shape[:2] or head.shape != pos.shape[:1]:
    raise errors.InputError(f'{path}: pos_gt_src {pos.shape[::-1]}, jnt_missing '
                            f'{missing.shape[::-1]}, headboxes_src {boxes.shape} '
                            'do not describe the same persons')
  return {'joints': pos[:, skeleton.MPII_TO_SKELETON] - 0.5,
          'visible': (missing == 0)[:, skeleton.MPII_TO_SKELETON], 'head_size': head}


def attach_official_head_sizes(persons: list[Person], gt: dict[str, np.ndarray],
                               gt_path: pathlib.Path, persons_path: pathlib.Path) -> None:
  """Sets person i's head size from column i of the official evaluation file.

  Raises:
    errors.InputError: the files do not list the same persons in one order
      (a different count, or a person whose joints are not within 2 px of
      the file's in the median over the joints annotated in both).
  """
  if len(persons) != len(gt['head_size']):
    raise errors.InputError(
        f'{gt_path}: {len(gt["head_size"])} persons but {persons_path} lists '
        f'{len(persons)}; expected the same persons in the same order (the '
        'official evaluation order), or remove it to match valid.h5 instead')
  for i, person in enumerate(persons):
    if not _median_distance(person.joints, person.visible, gt['joints'][i],
                            gt['visible'][i]) < 2.0:
      raise errors.InputError(
          f'{gt_path}: person {i} ({person.image}) is not person {i} of '
          f'{persons_path} (joints more than 2 px apart); expected the same '
          'persons in the same order')
    person.head_size = float(gt['head_size'][i])
