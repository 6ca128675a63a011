"""mpii: MPII Human Pose (Andriluka et al., CVPR 2014), single person crops.

Manual download: the images and either annotation form into `manual_dir`:

  <manual_dir>/images/<name>.jpg                 all 24,987 images
  <manual_dir>/train.json, valid.json            annotation_format='json'
  <manual_dir>/mpii_human_pose_v1_u12_1.mat      annotation_format='mat'
  <manual_dir>/valid.h5                          'mat': required (the split);
                                                 'json': optional (head sizes)
  <manual_dir>/<pseudo_3d_file>                  optional pseudo-3D joints

Splits: `train`, `holdout` and `validation`, the standard 2958-person
validation set of Tompson et al. 2015 (taken from the training images), which
the PCKh evaluation uses. JSON route: the persons of `train_file` /
`valid_file`. MAT route: `validation` = the persons (`index` = 0-based image
index into `annolist`, `person` = 0-based `annorect` index) listed in
`valid_h5` (hourglass format, like shared/data/mpii_eval); `train` = every
other annotated person of the `img_train == 1` images.
`holdout` (the plateau schedule's validation split, so that training never
sees the PCKh persons): the persons of every `holdout_every`-th image (default
20: the 20th, 40th, ... in the order the training persons list their images;
the last image if there are fewer) among the training persons, taken out of
`train`; persons of one image stay together, and no `validation` person is
ever in it.

Coordinates: both the .mat and the common JSON files (`joints`, `center`)
hold 1-based MATLAB pixel coordinates (the JSON joints equal the official
evaluation ground truth `pos_gt_src`; HRNet's loader subtracts 1 for its
0-based integer-centre convention). Pixel k of MATLAB has its centre at k,
which is k - 0.5 in our continuous convention, so the builder subtracts 0.5
from every coordinate. `visible` means annotated (JSON `joints_vis`; .mat: a
point present), as the official PCKh counts joints; MPII's occlusion flag
`is_visible` is not used. MPII joint ids 0-15 are `skeleton.JOINT_NAMES`.

Person box (the hourglass / HRNet practice): centre = annotated centre
(`objpos`) moved down by `center_shift` x scale pixels (15 x scale), side =
scale x 200 x `box_scale_factor` (1.25); stored crop = box x `crop_scale`
(1.5) resampled to `crop_size` (256).

Head size (PCKh normaliser, 0.6 x head box diagonal, stored in crop pixels):
.mat route from the head box `x1 y1 x2 y2`; JSON route from `valid_h5`'s
`normalize` for persons it lists (matched by image and joints), else 0 with
a logged count.

Bad files (`strict`, default False): an unreadable or undecodable image is
skipped with its persons, named in the log and listed in the dataset's
metadata (`builder.info.metadata['skipped_files']`); `strict=True` fails on
the first one with an error naming it. Missing files are listed before
anything is written.

Beam (`--config.data.beam_num_workers=N` or `--config.data.beam_options=...`,
see `registry.prepare`): one unit of work per shard of `_IMAGES_PER_UNIT`
consecutive images; the same examples as the sequential build.

Pseudo-3D (optional): `pseudo_3d_file`, an .npz (path relative to
`manual_dir`, or absolute) with one [16, 3] millimetre array per person keyed
'<image name>#<person index>', the person index being the stored `frame`
field (.mat: the `annorect` index; JSON: the order of that image's persons in
the annotation file). Persons without an entry get has_3d False.
"""

import collections
import dataclasses
import functools
import json
import pathlib
import reprlib
from typing import Any, Iterator

from absl import logging
import h5py
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from deepskeleton_jax import errors
from deepskeleton_jax.data import build_units
from deepskeleton_jax.data import example_format
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.geometry import skeleton

K = skeleton.NUM_JOINTS

_LAYOUT = """\
<manual_dir>/
  images/<name>.jpg              the images (mpii_human_pose_v1.tar.gz)
  train.json, valid.json         annotation_format='json' (the common JSON
                                 form: image, center, scale, joints, joints_vis)
  mpii_human_pose_v1_u12_1.mat   annotation_format='mat' (mpii_human_pose_v1_u12_2.zip)
  valid.h5                       'mat': the validation split (index, person);
                                 'json': optional, head sizes (normalize)
  <pseudo_3d_file>.npz           optional pseudo-3D joints"""

_MAX_LISTED = 30
_IMAGES_PER_UNIT = 50


@dataclasses.dataclass(eq=False)
class MpiiConfig(tfds.core.BuilderConfig):
  """Options of the mpii builder (see the module docstring)."""
  annotation_format: str = 'json'
  train_file: str = 'train.json'
  valid_file: str = 'valid.json'
  mat_file: str = 'mpii_human_pose_v1_u12_1.mat'
  valid_h5: str = 'valid.h5'
  images_dir: str = 'images'
  pseudo_3d_file: str = ''
  crop_size: int = 256
  crop_scale: float = 1.5
  box_scale_factor: float = 1.25
  center_shift: float = 15.0
  holdout_every: int = 20
  strict: bool = False

  def __post_init__(self):
    if int(self.holdout_every) < 2:
      raise errors.ConfigError(f'holdout_every must be >= 2, got {self.holdout_every}')
    if self.annotation_format not in ('json', 'mat'):
      raise errors.ConfigError("annotation_format must be 'json' or 'mat', got "
                       f'{self.annotation_format!r}')
    if int(self.crop_size) < 1:
      raise errors.ConfigError(f'crop_size must be >= 1, got {self.crop_size}')
    for f in ('crop_scale', 'box_scale_factor'):
      if not float(getattr(self, f)) > 0:
        raise errors.ConfigError(f'{f} must be positive, got {getattr(self, f)}')


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
    j = skeleton.MPII_TO_SKELETON[int(p.id)]
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
  try:
    mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    release = mat['RELEASE']
    return (np.atleast_1d(release.annolist),
            np.atleast_1d(np.asarray(release.img_train)).astype(int))
  except Exception as e:  # pylint: disable=broad-except
    # scipy raises many kinds of errors on damaged files; name the file.
    raise errors.InputError(f'{path}: not the MPII annotation .mat (a struct RELEASE '
                     f'with annolist and img_train) ({type(e).__name__}: {e})'
                     ) from e


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


def mat_persons(annolist: np.ndarray, img_train: np.ndarray,
                valid: dict[str, np.ndarray], mat_path: pathlib.Path,
                valid_path: pathlib.Path) -> tuple[list[Person], list[Person]]:
  """(train, validation) persons of the .mat route."""
  valid_pairs = [(int(i), int(p)) for i, p in zip(valid['index'],
                                                  valid['person'])]
  validation = []
  for i, p in valid_pairs:
    rects = np.atleast_1d(annolist[i].annorect) if i < len(annolist) else []
    person = (person_from_rect(annolist[i].image.name, p, rects[p])
              if p < len(rects) else None)
    if person is None:
      raise errors.InputError(f'{valid_path}: image {i} person {p} has no annotated '
                       f'person in {mat_path} (mismatched files?)')
    validation.append(person)
  held_out = set(valid_pairs)
  train = []
  for i in np.flatnonzero(img_train == 1):
    rects = annolist[i].annorect
    if _empty(rects):
      continue
    for p, rect in enumerate(np.atleast_1d(rects)):
      if (i, p) not in held_out:
        person = person_from_rect(annolist[i].image.name, p, rect)
        if person is not None:
          train.append(person)
  return train, validation


def attach_head_sizes(persons: list[Person], valid: dict[str, np.ndarray]
                      ) -> int:
  """Sets head sizes from valid.h5 `normalize`; returns how many matched.

  A JSON person matches a valid.h5 entry of the same image whose joints agree
  within 2 px (valid.h5 rounds them) over the joints annotated in both.
  """
  by_image = collections.defaultdict(list)
  for k, name in enumerate(valid['imgname']):
    by_image[name].append(k)
  matched = 0
  for person in persons:
    best, best_err = None, 2.0
    for k in by_image.get(person.image, ()):
      part = valid['part'][k] - 0.5
      both = person.visible & np.any(valid['part'][k] > 0, axis=-1)
      if both.any():
        err = np.abs(part[both] - person.joints[both]).max()
        if err < best_err:
          best, best_err = k, err
    if best is not None:
      person.head_size = float(valid['normalize'][best])
      matched += 1
  return matched


class Mpii(build_units.BeamAware, tfds.core.GeneratorBasedBuilder):
  """MPII Human Pose person crops (2D joints, head sizes, optional 3D)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': "A 'holdout' split (the persons of every holdout_every-th "
               'training image); unreadable images skipped and listed in the '
               'metadata unless strict; Beam builds.',
  }
  BUILDER_CONFIGS = [MpiiConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the images and annotations from '
      'http://human-pose.mpi-inf.mpg.de (or the common train.json/valid.json) '
      'into manual_dir:\n' + _LAYOUT)

  def __init__(self, *, file_format: str = 'array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return build_units.dataset_info(
        self, description=__doc__, homepage='http://human-pose.mpi-inf.mpg.de',
        citation='@inproceedings{andriluka14cvpr, author = {Andriluka, Mykhaylo '
        'and Pishchulin, Leonid and Gehler, Peter and Schiele, Bernt}, title = '
        '{2D Human Pose Estimation: New Benchmark and State of the Art '
        'Analysis}, booktitle = {CVPR}, year = {2014}}')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    root = pathlib.Path(dl_manager.manual_dir)
    need = ([cfg.mat_file, cfg.valid_h5] if cfg.annotation_format == 'mat'
            else [cfg.train_file, cfg.valid_file])
    missing = [str(root / n) for n in need if not (root / n).is_file()]
    if not (root / cfg.images_dir).is_dir():
      missing.append(f'{root / cfg.images_dir}/')
    pseudo_path = root / cfg.pseudo_3d_file if cfg.pseudo_3d_file else None
    if pseudo_path is not None and not pseudo_path.is_file():
      missing.append(str(pseudo_path))
    if missing:
      self._raise_missing(root, missing)

    valid_path = root / cfg.valid_h5
    if cfg.annotation_format == 'mat':
      annolist, img_train = read_mat(root / cfg.mat_file)
      train, validation = mat_persons(annolist, img_train,
                                      read_valid_h5(valid_path),
                                      root / cfg.mat_file, valid_path)
    else:
      train = read_json(root / cfg.train_file)
      validation = read_json(root / cfg.valid_file)
      if valid_path.is_file():
        valid = read_valid_h5(valid_path)
        for name, persons in (('train', train), ('validation', validation)):
          matched = attach_head_sizes(persons, valid)
          logging.info('mpii %s: head sizes for %d of %d persons from %s',
                       name, matched, len(persons), valid_path)
    for name, persons in (('train', train), ('validation', validation)):
      unknown = sum(p.head_size <= 0 for p in persons)
      if unknown:
        logging.warning('mpii %s: %d of %d persons have no head size '
                        '(head_size 0; PCKh cannot use them)', name, unknown,
                        len(persons))
    images = sorted({p.image for p in train + validation})
    missing = [str(root / cfg.images_dir / n) for n in images
               if not (root / cfg.images_dir / n).is_file()]
    if missing:
      self._raise_missing(root, missing)
    pseudo = _read_pseudo_3d(pseudo_path) if pseudo_path else {}
    train, holdout = split_holdout(train, cfg.holdout_every)
    units = [shard for split, persons in (('train', train), ('holdout', holdout),
                                          ('validation', validation))
             for shard in shards(root / cfg.images_dir, persons, pseudo, split)]
    return self._units('mpii', units, functools.partial(process_shard, cfg),
                       ('train', 'holdout', 'validation'), cfg.strict)

  def _raise_missing(self, root: pathlib.Path, missing: list[str]):
    listed = '\n  '.join(missing[:_MAX_LISTED])
    more = (f'\n  ... and {len(missing) - _MAX_LISTED} more'
            if len(missing) > _MAX_LISTED else '')
    raise errors.InputError(
        f'{root} lacks {len(missing)} files or folders that the MPII build '
        f'(annotation_format={self.builder_config.annotation_format!r}) '
        f'needs:\n  {listed}{more}\nExpected layout:\n{_LAYOUT}')

  def _summarize(self, records: dict[str, list[Any]]) -> None:
    rejected = sum(records.get('rejected_examples', []))
    with_3d = records.get('with_3d', [])
    self.info.metadata['rejected_examples'] = rejected
    if with_3d:
      logging.info('mpii: %d of %d persons have pseudo-3D joints',
                   sum(w for w, _ in with_3d), sum(n for _, n in with_3d))
    if rejected:
      logging.warning('mpii: rejected %d invalid examples (NaN or '
                      'out-of-range joints, or a bad box)', rejected)


@dataclasses.dataclass(frozen=True)
class ImageShard:
  """One unit of work: the persons of consecutive images of one split."""
  images_dir: pathlib.Path
  persons: tuple[Person, ...]
  pseudo: dict[str, np.ndarray]  # The pseudo-3D entries of these persons.
  splits: tuple[str, ...]


def split_holdout(train: list[Person], every: int
                  ) -> tuple[list[Person], list[Person]]:
  """(train, holdout): the persons of every `every`-th image are held out."""
  order = list(dict.fromkeys(p.image for p in train))
  if len(order) < 2:
    raise errors.InputError(
        f'the training persons come from {len(order)} image(s); the holdout '
        'split needs at least 2 training images')
  held = set(order[every - 1::every]) or set(order[-1:])
  return ([p for p in train if p.image not in held],
          [p for p in train if p.image in held])


def shards(images_dir: pathlib.Path, persons: list[Person],
           pseudo: dict[str, np.ndarray], split: str) -> list[ImageShard]:
  """Units of `_IMAGES_PER_UNIT` images (persons of an image stay together)."""
  by_image = collections.defaultdict(list)
  for p in persons:
    by_image[p.image].append(p)
  images = list(by_image)
  units = []
  for start in range(0, len(images), _IMAGES_PER_UNIT):
    group = [p for name in images[start:start + _IMAGES_PER_UNIT]
             for p in by_image[name]]
    keys = [f'{p.image}#{p.person}' for p in group]
    units.append(ImageShard(images_dir, tuple(group),
                            {k: pseudo[k] for k in keys if k in pseudo},
                            (split,)))
  return units


def process_shard(cfg: MpiiConfig, unit: ImageShard) -> Iterator[tuple]:
  """The examples of one shard of images, and side records.

  An unreadable image is skipped with its persons (a `skipped_files`
  record) unless `cfg.strict`, when its error (naming it) propagates.
  """
  rejected = with_3d = 0
  name, image = None, None
  for person in unit.persons:
    if person.image != name:
      name = person.image
      path = unit.images_dir / name
      try:
        image = image_ops.read_image(path)
      except errors.InputError as e:
        reason = str(e).removeprefix(f'{path}: ')
        if cfg.strict:
          raise build_units.BadFileError(path, reason) from e
        yield build_units.skip(path, reason)
        image = None
    if image is None:
      continue
    key = f'{person.image}#{person.person}'
    joints_3d = unit.pseudo.get(key)
    try:
      _check_joints(person, image.shape)
      center = person.center + (0.0, cfg.center_shift * person.scale)
      example = example_format.make_example(
          image, center=center,
          box_size=person.scale * 200.0 * cfg.box_scale_factor,
          crop_size=cfg.crop_size, crop_scale=cfg.crop_scale,
          joints_2d=person.joints, visible=person.visible,
          joints_3d=joints_3d, head_size=person.head_size,
          image_name=person.image, frame=person.person)
    except example_format.InvalidExample:
      rejected += 1
      continue
    with_3d += joints_3d is not None
    yield unit.splits[0], key, example
  if unit.pseudo:
    yield build_units.side('with_3d', [with_3d, len(unit.persons)])
  if rejected:
    yield build_units.side('rejected_examples', rejected)


def _read_pseudo_3d(path: pathlib.Path) -> dict[str, np.ndarray]:
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


def _check_joints(person: Person, image_shape: tuple[int, ...]) -> None:
  """Raises InvalidExample for NaN or far-off-image annotations."""
  h, w = image_shape[:2]
  joints = person.joints[person.visible]
  if not (np.all(np.isfinite(joints)) and np.all(np.isfinite(person.center))
          and np.isfinite(person.scale)):
    raise example_format.InvalidExample('non-finite annotation')
  if person.scale <= 0:
    raise example_format.InvalidExample('non-positive scale')
  size = np.array([w, h])
  if np.any(joints < -size) or np.any(joints > 2 * size):
    raise example_format.InvalidExample('joints far outside the image')
