"""bvh_mocap: 3D poses from any folder of BVH files, seen by virtual cameras.

Image-free training data for the pose regressor (the paper's central claim:
skeleton maps alone suffice, here with unlimited motion capture instead of
Human3.6M poses). Each kept frame of each BVH file is posed by forward
kinematics (`deepskeleton_jax.bvh`), mapped to the 16-joint skeleton
(configurable names; CMU's by default), scaled to millimetres and seen by
`cameras_per_pose` random virtual pinhole cameras. Examples store a 1x1 black
image; the regressor is trained on skeleton maps rendered from the joints.

Manual download: put any BVH files (e.g. the CMU Graphics Lab Motion Capture
Database in its BVH conversion) anywhere under `manual_dir`; they are found
recursively (`**/*.bvh`) and sorted by relative path.

Virtual cameras (seeded by `seed`, file name and frame: a rebuild is identical):
- world frame of the BVH: Y up (CMU); the camera frame is x right, y down,
  z forward (a proper rotation, no mirroring);
- target: the mean of the 16 joints; yaw uniform in [0, 360) degrees around
  the vertical; pitch (elevation of the camera above the target, positive
  looks down) uniform in `pitch_deg`; distance uniform in `distance_mm`
  (Human3.6M-like 4-6 m by default);
- intrinsics: focal `focal_length` px, principal point at the centre of a
  virtual `image_size` x `image_size` image (Human3.6M-like defaults).
The person box is the square around the projected joints' bounding box, side
= max extent x `box_margin`; the stored crop is that box x `crop_scale`
resampled to `crop_size`, so joints_2d == camera.project(joints_3d,
intrinsics) in crop pixels.

Splits by file: `test_files` (file stems) if given, else the last
`test_fraction` of the sorted files (at least one) are `test`. Of the other
files, `holdout_files` (stems) if given, else `holdout_fraction` (default
0.05, at least one file) spread evenly over the sorted list (every
1/holdout_fraction-th file, so that held-out clips come from many subjects)
are `holdout` (the plateau schedule's validation split; training never opens
`test`), the rest `train`. Deterministic: the same files give the same splits.

Bad files (`strict`, default False): a BVH file that cannot be read or parsed,
or whose hierarchy lacks a joint of `joint_mapping`, is skipped, named in the
log and listed in the dataset's metadata (`builder.info.metadata
['skipped_files']`; the real CMU conversion has a few malformed files);
`strict=True` fails on the first one with an error naming it.

Beam (`--config.data.beam_num_workers=N` or `--config.data.beam_options=...`,
see `registry.prepare`): one unit of work per BVH file; the same examples as
the sequential build.
"""

import dataclasses
import functools
import pathlib
from typing import Any, Iterator
import zlib

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from deepskeleton_jax import errors
from deepskeleton_jax.data import build_units
from deepskeleton_jax.data import example_format
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import skeleton
from . import bvh

_LAYOUT = """\
<manual_dir>/
  **/*.bvh     any BVH files, in any sub-folders (e.g. CMU: 01/01_01.bvh ...)
"""


@dataclasses.dataclass(eq=False)
class BvhMocapConfig(tfds.core.BuilderConfig):
  """Options of the bvh_mocap builder (see the module docstring)."""
  joint_mapping: tuple[str, ...] = bvh.CMU_TO_SKELETON
  unit_mm: float = bvh.CMU_UNIT_MM
  frame_every: int = 4
  cameras_per_pose: int = 1
  test_fraction: float = 0.1
  test_files: tuple[str, ...] = ()
  holdout_fraction: float = 0.05
  holdout_files: tuple[str, ...] = ()
  strict: bool = False
  crop_size: int = 256
  crop_scale: float = 1.5
  box_margin: float = 1.25
  focal_length: float = 1145.0
  image_size: int = 1000
  distance_mm: tuple[float, float] = (4000.0, 6000.0)
  pitch_deg: tuple[float, float] = (-5.0, 25.0)
  seed: int = 0

  def __post_init__(self):
    for f in ('joint_mapping', 'test_files', 'holdout_files', 'distance_mm',
              'pitch_deg'):
      setattr(self, f, tuple(getattr(self, f)))
    if len(self.joint_mapping) != skeleton.NUM_JOINTS:
      raise errors.ConfigError(f'joint_mapping must name {skeleton.NUM_JOINTS} joints '
                       f'(order {skeleton.JOINT_NAMES}), got '
                       f'{len(self.joint_mapping)}')
    for f in ('frame_every', 'cameras_per_pose', 'crop_size', 'image_size'):
      if int(getattr(self, f)) < 1:
        raise errors.ConfigError(f'{f} must be >= 1, got {getattr(self, f)}')
    for f in ('unit_mm', 'crop_scale', 'box_margin', 'focal_length'):
      if not float(getattr(self, f)) > 0:
        raise errors.ConfigError(f'{f} must be positive, got {getattr(self, f)}')
    if not 0.0 <= self.test_fraction < 1.0:
      raise errors.ConfigError(f'test_fraction must be in [0, 1), got '
                       f'{self.test_fraction}')
    if not 0.0 < self.holdout_fraction < 1.0:
      raise errors.ConfigError(f'holdout_fraction must be in (0, 1), got '
                       f'{self.holdout_fraction}')
    lo, hi = self.distance_mm
    if not 0 < lo <= hi:
      raise errors.ConfigError(f'distance_mm must be (min, max) with 0 < min <= max, '
                       f'got {self.distance_mm}')


def look_at_camera(target: np.ndarray, yaw_deg: float, pitch_deg: float,
                   distance: float) -> tuple[np.ndarray, np.ndarray]:
  """A camera looking at `target` in a Y-up world.

  Args:
    target: [3] world point the optical axis passes through.
    yaw_deg: azimuth of the camera around the vertical axis.
    pitch_deg: elevation of the camera above the target (positive: looking
      down).
    distance: camera-to-target distance.

  Returns:
    (rotation [3, 3], translation [3]) with X_cam = R X_world + t, camera
    frame x right, y down, z forward, det R = +1.
  """
  yaw, pitch = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
  direction = np.array([np.cos(pitch) * np.sin(yaw), np.sin(pitch),
                        np.cos(pitch) * np.cos(yaw)])
  position = np.asarray(target, np.float64) + distance * direction
  forward = -direction
  right = np.cross(forward, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right)
  down = np.cross(forward, right)
  rotation = np.stack([right, down, forward])
  return rotation, -rotation @ position


@dataclasses.dataclass(frozen=True)
class BvhFile:
  """One unit of work: one BVH file of one split."""
  path: pathlib.Path
  rel: str  # Relative to manual_dir, posix.
  splits: tuple[str, ...]


def evenly_spaced(items: list, fraction: float) -> list:
  """max(1, round(fraction x n)) items spread evenly (fewer than n)."""
  n = len(items)
  count = min(n - 1, max(1, round(fraction * n)))
  if count <= 0:
    return []
  return [items[int((k + 0.5) * n / count)] for k in range(count)]


def _by_stems(files: list[pathlib.Path], stems: tuple[str, ...], option: str,
              root: pathlib.Path) -> list[pathlib.Path]:
  missing = sorted(set(stems) - {f.stem for f in files})
  if missing:
    raise errors.ConfigError(
        f'{option} {missing} are not among the BVH files under {root}: '
        f'{sorted(f.stem for f in files)}')
  return [f for f in files if f.stem in stems]


def split_files(files: list[pathlib.Path], cfg: 'BvhMocapConfig',
                root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """train / holdout / test files (module docstring)."""
  if cfg.test_files:
    test = _by_stems(files, cfg.test_files, 'test_files', root)
  else:
    num_test = max(1, round(cfg.test_fraction * len(files)))
    test = files[len(files) - num_test:] if cfg.test_fraction > 0 else []
  rest = [f for f in files if f not in test]
  if cfg.holdout_files:
    holdout = _by_stems(rest, cfg.holdout_files, 'holdout_files', root)
  else:
    holdout = evenly_spaced(rest, cfg.holdout_fraction)
  train = [f for f in rest if f not in holdout]
  if not train or not test or not holdout:
    raise errors.InputError(
        f'need at least one train, one holdout and one test BVH file, got '
        f'{len(train)} train, {len(holdout)} holdout and {len(test)} test from '
        f'{len(files)} files under {root} (test_fraction={cfg.test_fraction}, '
        f'test_files={cfg.test_files}, holdout_files={cfg.holdout_files})')
  return {'train': train, 'holdout': holdout, 'test': test}


def read_joints(cfg: 'BvhMocapConfig', path: pathlib.Path
                ) -> tuple[np.ndarray, np.ndarray]:
  """The kept frames of a BVH file and their 16 joints in world millimetres.

  Args:
    cfg: the builder config (`frame_every`, `joint_mapping`, `unit_mm`).
    path: the BVH file.

  Returns:
    (frame indices [n], joints [n, 16, 3] mm).

  Raises:
    build_units.BadFileError: naming the file when it cannot be read or
      parsed, or lacks a joint of the mapping.
  """
  try:
    motion = bvh.load(path)
    frames = np.arange(0, motion.num_frames, cfg.frame_every)
    world = bvh.select_joints(bvh.forward_kinematics(motion, frames),
                              motion.names, cfg.joint_mapping) * cfg.unit_mm
  except ValueError as e:
    raise build_units.BadFileError(path, str(e).removeprefix(f'{path}: ')) from e
  return frames, world


def process_file(cfg: 'BvhMocapConfig', unit: BvhFile) -> Iterator[tuple]:
  """The examples of one BVH file (module docstring), and side records.

  Raises:
    build_units.BadFileError: naming the file when it cannot be read or
      parsed, or lacks a joint of the mapping.
  """
  frames, world = read_joints(cfg, unit.path)
  f = cfg.focal_length
  c = cfg.image_size / 2.0
  intrinsics = np.array([f, f, c, c])
  file_seed = zlib.crc32(unit.path.name.encode())
  rejected = 0
  for frame, joints in zip(frames, world):
    rng = np.random.default_rng([cfg.seed, file_seed, int(frame)])
    for k in range(cfg.cameras_per_pose):
      rotation, translation = look_at_camera(
          joints.mean(axis=0), rng.uniform(0.0, 360.0),
          rng.uniform(*cfg.pitch_deg), rng.uniform(*cfg.distance_mm))
      try:
        example = _example(cfg, camera.world_to_camera(joints, rotation,
                                                       translation),
                           intrinsics, unit, int(frame), k)
      except example_format.InvalidExample:
        rejected += 1
        continue
      yield unit.splits[0], f'{unit.rel}#{frame}#{k}', example
  if rejected:
    yield build_units.side('rejected_examples', rejected)


def _example(cfg: 'BvhMocapConfig', joints_3d: np.ndarray,
             intrinsics: np.ndarray, unit: BvhFile, frame: int, k: int
             ) -> dict[str, Any]:
  if not np.all(joints_3d[:, 2] > 0):
    raise example_format.InvalidExample('joints behind the camera')
  joints_2d = camera.project_intrinsics(joints_3d, intrinsics)
  lo, hi = joints_2d.min(axis=0), joints_2d.max(axis=0)
  return example_format.make_example(
      None, center=(lo + hi) / 2,
      box_size=float(np.max(hi - lo)) * cfg.box_margin,
      crop_size=cfg.crop_size, crop_scale=cfg.crop_scale,
      joints_2d=joints_2d, visible=np.ones(skeleton.NUM_JOINTS, bool),
      joints_3d=joints_3d, intrinsics=intrinsics,
      subject=unit.path.stem.split('_')[0], action=unit.path.stem,
      camera_id=f'virtual{k}', image_name=unit.rel, frame=frame)


class BvhMocap(build_units.BeamAware, tfds.core.GeneratorBasedBuilder):
  """Virtual-camera views of BVH motion capture (no images)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': "A 'holdout' split (holdout_fraction / holdout_files of the "
               'non-test files); bad files skipped and listed in the metadata '
               'unless strict; Beam builds.',
  }
  BUILDER_CONFIGS = [BvhMocapConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put BVH files (e.g. the CMU Motion Capture Database BVH conversion) '
      'anywhere under manual_dir:\n' + _LAYOUT)

  def __init__(self, *, file_format: str = 'array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return build_units.dataset_info(
        self, description=__doc__, homepage='http://mocap.cs.cmu.edu/')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    root = pathlib.Path(dl_manager.manual_dir)
    files = sorted(root.rglob('*.bvh'))
    if not files:
      raise errors.InputError(f'{root} holds no .bvh files; expected layout:\n'
                              f'{_LAYOUT}')
    units = [BvhFile(f, f.relative_to(root).as_posix(), (split,))
             for split, split_files_ in split_files(files, cfg, root).items()
             for f in split_files_]
    return self._units('bvh_mocap', units, functools.partial(process_file, cfg),
                       ('train', 'holdout', 'test'), cfg.strict)

  def _summarize(self, records: dict[str, list[Any]]) -> None:
    rejected = sum(records.get('rejected_examples', []))
    self.info.metadata['rejected_examples'] = rejected
    if rejected:
      logging.warning('bvh_mocap: rejected %d invalid examples (NaN or '
                      'out-of-range joints)', rejected)
