"""mpii: MPII Human Pose (Andriluka et al., CVPR 2014), single person crops.

Manual download: the images and either annotation form into `manual_dir`:

  <manual_dir>/images/<name>.jpg                 all 24,987 images
  <manual_dir>/train.json, valid.json            annotation_format='json'
  <manual_dir>/mpii_human_pose_v1_u12_1.mat      annotation_format='mat'
  <manual_dir>/valid.h5                          'mat': required (the split);
                                                 'json': optional (head sizes)
  <manual_dir>/gt_valid.mat                      'json': optional, the official
                                                 evaluation file (head sizes)
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
.mat route from the head box `x1 y1 x2 y2`. JSON route, validation persons:
from the official evaluation file `gt_valid_file` (HRNet ships it as
`gt_valid.mat` next to valid.json; `gt_valid_tompson_format.mat` is the same
file) where present: person i of `valid_file` is column i of its
`headboxes_src`, exactly as the official evaluation pairs its rows (the build
checks that the files list the same persons: same count, joints within 2 px
of `pos_gt_src` for most annotated joints). Otherwise, and for the training
persons, from `valid_h5`'s `normalize` (0.6 x the same head boxes) for
persons it lists, matched by image and the median joint distance (under 2
px: `pos_gt_src` holds a zero coordinate for 10 of the 2958 validation
persons where the annotation has a value), else 0 with a logged count.

Row order: the validation persons' keys ('<image>#<person>') in the order of
the annotation file they come from (valid.json; .mat route: valid.h5) are
recorded in the dataset's metadata (`example_format.ROW_ORDER`); for the
standard files this is the 2958-person order of the official evaluation, the
order of the published detection files (bearpaw's, Newell's, Tompson's
`.mat`/`.h5`), which evaluation joins to the examples through it.

Bad files (`strict`, default False): an unreadable or undecodable image is
skipped with its persons, named in the log and listed in the dataset's
metadata (`builder.info.metadata['skipped_files']`); `strict=True` fails on
the first one with an error naming it. Missing files are listed before
anything is written.

Beam (`--config.data.beam_num_workers=N` or `--config.data.beam_options=...`,
see `registry.prepare`): one unit of work per shard of `_IMAGES_PER_UNIT`
consecutive images; the same examples as the sequential build.

The annotation files are read (and checked) by `mpii_annotations.py`.

Pseudo-3D (optional): `pseudo_3d_file`, an .npz (path relative to
`manual_dir`, or absolute) with one [16, 3] millimetre array per person keyed
'<image name>#<person index>', the person index being the stored `frame`
field (.mat: the `annorect` index; JSON: the order of that image's persons in
the annotation file). Persons without an entry get has_3d False.
"""

import collections
import dataclasses
import functools
import pathlib
from typing import Any, Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from deepskeleton_jax import errors
from deepskeleton_jax.data import build_units
from deepskeleton_jax.data import example_format
from deepskeleton_jax.data import image_ops
from . import mpii_annotations


_LAYOUT = """\
<manual_dir>/
  images/<name>.jpg              the images (mpii_human_pose_v1.tar.gz)
  train.json, valid.json         annotation_format='json' (the common JSON
                                 form: image, center, scale, joints, joints_vis)
  mpii_human_pose_v1_u12_1.mat   annotation_format='mat' (mpii_human_pose_v1_u12_2.zip)
  valid.h5                       'mat': the validation split (index, person);
                                 'json': optional, head sizes (normalize)
  gt_valid.mat                   'json': optional, the official evaluation
                                 file (head sizes of the validation persons)
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
  gt_valid_file: str = 'gt_valid.mat'
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


class Mpii(build_units.BeamAware, tfds.core.GeneratorBasedBuilder):
  """MPII Human Pose person crops (2D joints, head sizes, optional 3D)."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': "A 'holdout' split (the persons of every holdout_every-th "
               'training image); unreadable images skipped and listed in the '
               'metadata unless strict; Beam builds.',
      '1.2.0': 'The validation order recorded in the metadata (row_order, for '
               'detection files); JSON route head sizes from the official '
               'gt_valid.mat by position where present, and valid.h5 matched by '
               'the median joint distance (all 2958 validation persons).',
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
      annolist, img_train = mpii_annotations.read_mat(root / cfg.mat_file)
      train, validation = mpii_annotations.mat_persons(
          annolist, img_train, mpii_annotations.read_valid_h5(valid_path),
          root / cfg.mat_file, valid_path)
    else:
      train = mpii_annotations.read_json(root / cfg.train_file)
      validation = mpii_annotations.read_json(root / cfg.valid_file)
      self._json_head_sizes(root, train, validation)
    self.info.metadata[example_format.ROW_ORDER] = {
        'validation': [example_format.person_key(p.image, p.person) for p in validation]}
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
    pseudo = mpii_annotations.read_pseudo_3d(pseudo_path) if pseudo_path else {}
    train, holdout = split_holdout(train, cfg.holdout_every)
    units = [shard for split, persons in (('train', train), ('holdout', holdout),
                                          ('validation', validation))
             for shard in shards(root / cfg.images_dir, persons, pseudo, split)]
    return self._units('mpii', units, functools.partial(process_shard, cfg),
                       ('train', 'holdout', 'validation'), cfg.strict)

  def _json_head_sizes(self, root: pathlib.Path, train: list[mpii_annotations.Person],
                       validation: list[mpii_annotations.Person]) -> None:
    """JSON route: head sizes from gt_valid_file and/or valid_h5 (module docstring)."""
    cfg = self.builder_config
    gt_path, valid_path = root / cfg.gt_valid_file, root / cfg.valid_h5
    todo = [('train', train), ('validation', validation)]
    if gt_path.is_file():
      mpii_annotations.attach_official_head_sizes(
          validation, mpii_annotations.read_gt_valid(gt_path), gt_path, root / cfg.valid_file)
      logging.info('mpii validation: head sizes of all %d persons from %s',
                   len(validation), gt_path)
      todo = todo[:1]
    if valid_path.is_file():
      valid = mpii_annotations.read_valid_h5(valid_path)
      for name, persons in todo:
        matched = mpii_annotations.attach_head_sizes(persons, valid)
        logging.info('mpii %s: head sizes for %d of %d persons from %s',
                     name, matched, len(persons), valid_path)

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
  persons: tuple[mpii_annotations.Person, ...]
  pseudo: dict[str, np.ndarray]  # The pseudo-3D entries of these persons.
  splits: tuple[str, ...]


def split_holdout(train: list[mpii_annotations.Person], every: int
                  ) -> tuple[list[mpii_annotations.Person], list[mpii_annotations.Person]]:
  """(train, holdout): the persons of every `every`-th image are held out."""
  order = list(dict.fromkeys(p.image for p in train))
  if len(order) < 2:
    raise errors.InputError(
        f'the training persons come from {len(order)} image(s); the holdout '
        'split needs at least 2 training images')
  held = set(order[every - 1::every]) or set(order[-1:])
  return ([p for p in train if p.image not in held],
          [p for p in train if p.image in held])


def shards(images_dir: pathlib.Path, persons: list[mpii_annotations.Person],
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
    keys = [example_format.person_key(p.image, p.person) for p in group]
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
    key = example_format.person_key(person.image, person.person)
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


def _check_joints(person: mpii_annotations.Person, image_shape: tuple[int, ...]) -> None:
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
