"""human36m: Human3.6M (Ionescu et al., TPAMI 2014) from the official release.

Manual download (the licence forbids redistribution): unpack the official
per-subject archives (Videos, D3 Positions, optionally D3 Positions mono)
into `manual_dir`:

  <manual_dir>/S1/Videos/<Action>.<camera_id>.mp4
  <manual_dir>/S1/MyPoseFeatures/D3_Positions/<Action>.cdf
  <manual_dir>/S1/MyPoseFeatures/D3_Positions_mono/<Action>.<camera_id>.cdf
                                                       (optional, a check)
  ... the same for S5 S6 S7 S8 S9 S11.

Splits (the paper's protocol 1; all four cameras):
- `train`: S1 S5 S6 S7 S8, every `train_every`-th frame (default 5), without
  the held-out frames below;
- `holdout` (the plateau schedule's validation split; training never opens
  `test`): the last `holdout_fraction` (default 0.05, at least one frame) of
  the subsampled frames of every training video (subject, action, camera),
  contiguous at the end of each video so that near-duplicate neighbours of
  the held-out frames barely leak into `train`. The boundary is taken on the
  pose (CDF) frames, so the four cameras of a sequence hold out the same
  instants;
- `test`: S9 S11, every `test_every`-th frame (default 64).
Every action is the CDF file's stem (with its take suffix, e.g. 'Walking 1');
its video is `<Action>.<camera_id>.mp4` (the spellings Photo/TakingPhoto and
WalkDog/WalkingDog are accepted for each other).

S11 'Directions' (`skip_sequences`, default ('S11/Directions',)): its
54138969 video is damaged in the official release, and VideoPose3D and the
baselines built on it drop the whole sequence (all four cameras; 'Directions
1' stays). The build follows them and logs it; set `skip_sequences=()` to
keep the three readable cameras (`skip_videos` skips single videos,
'<subject>/<Action>.<camera_id>').

Conventions:
- 3D: the CDF variable `Pose` (world frame, mm) reshaped to (frames, 32, 3),
  mapped to camera frames with the published cameras (`h36m_cameras`),
  reduced to the 16 joints by `skeleton.H36M32_TO_SKELETON` (thorax root).
  Stored joints_3d are absolute camera-frame millimetres.
- 2D: projection with the cameras' radial and tangential distortion
  (`camera.project_distorted`), i.e. where the joints are in the video frame.
  Stored intrinsics are the pinhole part (f, c) only, so projecting joints_3d
  through them differs from joints_2d by the lens distortion (a few pixels
  at most near the image centre).
- Person box: the square around the bounding box of the 16 projected joints,
  side = its larger extent x `box_margin` (default 1.25); stored crop = box x
  `crop_scale` (1.5) resampled to `crop_size` (256).
- Frames are decoded with OpenCV sequentially; frames that the subsampling
  skips are only grabbed (`cap.grab()`), not retrieved (no colour conversion
  or copy). Videos must have the published frame size (1000x1002 for cameras
  54138969 and 60457274, 1000x1000 for 55011271 and 58860488).

Checks on the real data:
- Camera-frame positions (`mono_check_mm`, default 5): where the release also
  holds `D3_Positions_mono/<Action>.<camera_id>.cdf` (the official
  camera-frame joints), the build compares them with its own world-to-camera
  transform of `D3_Positions` (all frames, all 32 joints), logs the largest
  deviation in mm, stores it in the dataset's metadata (`mono_check`) and
  fails with an error naming the file above `mono_check_mm` (0 disables).
- Bad files (`strict`, default False): an unreadable CDF or video (or one of
  the wrong frame size) is skipped with its whole video, named in the log and
  listed in the metadata (`builder.info.metadata['skipped_files']`);
  `strict=True` fails on the first one with an error naming it. A video
  shorter than its CDF uses the common frames and logs the shortfall;
  examples with NaN, behind-camera or far-out-of-frame joints are rejected and
  counted in the log and the metadata (`rejected_examples`). Missing files are
  reported together with the expected layout before anything is written.

Beam (`--config.data.beam_num_workers=N` or `--config.data.beam_options=...`,
see `registry.prepare`): one unit of work per (subject, action, camera)
video; the same examples as the sequential build.
"""

import dataclasses
import functools
import math
import pathlib
from typing import Any, Iterator

from absl import logging
import cdflib
import cv2
import numpy as np
import tensorflow_datasets as tfds

from deepskeleton_jax import errors
from deepskeleton_jax.data import build_units
from deepskeleton_jax.data import example_format
from deepskeleton_jax.geometry import skeleton
from . import h36m_cameras

_LAYOUT = """\
<manual_dir>/
  S1/Videos/<Action>.<camera_id>.mp4           e.g. 'S1/Videos/Walking 1.54138969.mp4'
  S1/MyPoseFeatures/D3_Positions/<Action>.cdf  e.g. 'S1/MyPoseFeatures/D3_Positions/Walking 1.cdf'
  S1/MyPoseFeatures/D3_Positions_mono/<Action>.<camera_id>.cdf   (optional)
  S5/ S6/ S7/ S8/ S9/ S11/                     the same
(camera ids 54138969 55011271 58860488 60457274; the official archives
 'Videos' and 'D3 Positions' of each subject unpack to this layout)"""

_ALIASES = {'TakingPhoto': 'Photo', 'Photo': 'TakingPhoto',
            'WalkingDog': 'WalkDog', 'WalkDog': 'WalkingDog'}

_MAX_LISTED = 30


@dataclasses.dataclass(eq=False)
class Human36mConfig(tfds.core.BuilderConfig):
  """Options of the human36m builder (see the module docstring).

  Attributes:
    train_subjects, test_subjects: subject folders per split.
    train_every, test_every: frame subsampling per split.
    holdout_fraction: the last fraction of the subsampled frames of every
      training video that goes to `holdout` (in (0, 1); at least one frame).
    cameras: camera ids to use.
    actions: if not empty, keep only these actions (a CDF stem such as
      'Walking 1', or its base name 'Walking' for every take).
    crop_size, crop_scale, box_margin: the stored crop (module docstring).
    skip_sequences: '<subject>/<Action>' sequences to skip (all cameras).
    skip_videos: '<subject>/<Action>.<camera_id>' videos to skip.
    strict: fail on the first unreadable file instead of skipping it.
    mono_check_mm: largest allowed deviation (mm) from D3_Positions_mono
      where the release has it (0: no check).
  """
  train_subjects: tuple[str, ...] = ('S1', 'S5', 'S6', 'S7', 'S8')
  test_subjects: tuple[str, ...] = ('S9', 'S11')
  train_every: int = 5
  test_every: int = 64
  holdout_fraction: float = 0.05
  cameras: tuple[str, ...] = h36m_cameras.CAMERA_IDS
  actions: tuple[str, ...] = ()
  crop_size: int = 256
  crop_scale: float = 1.5
  box_margin: float = 1.25
  skip_sequences: tuple[str, ...] = ('S11/Directions',)
  skip_videos: tuple[str, ...] = ()
  strict: bool = False
  mono_check_mm: float = 5.0

  def __post_init__(self):
    for f in ('train_subjects', 'test_subjects', 'cameras', 'actions',
              'skip_sequences', 'skip_videos'):
      value = getattr(self, f)
      setattr(self, f, (value,) if isinstance(value, str) else tuple(value))
    for s in self.train_subjects + self.test_subjects:
      if s not in h36m_cameras.SUBJECTS:
        raise errors.ConfigError(f'subjects must be among {h36m_cameras.SUBJECTS}, '
                                 f'got {s!r}')
    for c in self.cameras:
      if c not in h36m_cameras.CAMERA_IDS:
        raise errors.ConfigError(f'cameras must be among {h36m_cameras.CAMERA_IDS}, '
                                 f'got {c!r}')
    for f in ('train_every', 'test_every', 'crop_size'):
      if int(getattr(self, f)) < 1:
        raise errors.ConfigError(f'{f} must be >= 1, got {getattr(self, f)}')
    for f in ('crop_scale', 'box_margin'):
      if not float(getattr(self, f)) > 0:
        raise errors.ConfigError(f'{f} must be positive, got {getattr(self, f)}')
    if not 0.0 < self.holdout_fraction < 1.0:
      raise errors.ConfigError('holdout_fraction must be in (0, 1), got '
                               f'{self.holdout_fraction}')
    if not self.mono_check_mm >= 0:
      raise errors.ConfigError(f'mono_check_mm must be >= 0, got {self.mono_check_mm}')


@dataclasses.dataclass(frozen=True)
class Video:
  """One unit of work: one (subject, action, camera) video.

  Attributes:
    subject, action, camera_id: ids ('S1', 'Walking 1', '54138969').
    cdf: the D3_Positions file of the sequence.
    video: the mp4 file.
    mono: the D3_Positions_mono file, or None where the release lacks it.
    every: frame subsampling.
    holdout_fraction: the last fraction of the subsampled frames that go to
      'holdout' (0: every frame goes to `splits[0]`).
    splits: ('train', 'holdout') or ('test',).
  """
  subject: str
  action: str
  camera_id: str
  cdf: pathlib.Path
  video: pathlib.Path
  mono: pathlib.Path | None
  every: int
  holdout_fraction: float
  splits: tuple[str, ...]


def num_held_out(num_frames: int, fraction: float) -> int:
  """Frames at the end of a video that go to holdout: ceil(fraction x n)."""
  if fraction <= 0 or num_frames == 0:
    return 0
  return min(num_frames, math.ceil(fraction * num_frames - 1e-9))


def read_poses(path: pathlib.Path, variable: str = 'Pose') -> np.ndarray:
  """Reads a D3_Positions(_mono) CDF as [frames, 32, 3] millimetres.

  Args:
    path: the .cdf file.
    variable: the CDF variable.

  Returns:
    float64 [F, 32, 3].

  Raises:
    build_units.BadFileError: naming the file when it is not a readable CDF
      whose variable holds numbers of shape (1, frames, 96) (the release's) or
      (frames, 96): 32 joints x 3 coordinates per frame. Nothing else is
      reshaped to fit (a D2_Positions file has 32 x 2 = 64 values per frame).
  """
  try:
    pose = np.asarray(cdflib.CDF(str(path)).varget(variable))
  except Exception as e:  # pylint: disable=broad-except
    # cdflib raises many kinds of errors on damaged files; name the file.
    raise build_units.BadFileError(
        path, f'not a readable CDF file with a variable "{variable}" '
        f'({type(e).__name__}: {e})') from e
  frames = pose[0] if pose.ndim == 3 and pose.shape[0] == 1 else pose
  if (pose.dtype.kind not in 'iuf' or frames.ndim != 2 or frames.shape[1] != 96
      or not frames.shape[0]):
    raise build_units.BadFileError(
        path, f'variable "{variable}" holds {pose.dtype} values of shape '
        f'{pose.shape}; expected numbers of shape (1, frames, 96) or (frames, '
        '96): 32 joints x 3 coordinates (mm) per frame')
  return frames.astype(np.float64).reshape(-1, 32, 3)


def read_frames(path: pathlib.Path, frames: np.ndarray, num_expected: int,
                size: tuple[int, int] | None = None, retrieve_all: bool = False
                ) -> Iterator[tuple[int, np.ndarray]]:
  """Decodes the listed frames of a video, in order, without storing others.

  Frames not listed are only grabbed (`cap.grab()`: demuxed and decoded by
  the codec, but not converted to BGR nor copied out).

  Args:
    path: the video file.
    frames: increasing frame indices to return.
    num_expected: the number of pose frames (for the shortfall log).
    size: the expected (width, height) of the frames, or None.
    retrieve_all: also retrieve the frames not listed (the reference that
      benchmarks/build_benchmark.py measures grab-only skipping against).

  Yields:
    (frame index, [H, W, 3] uint8 RGB image).

  Raises:
    build_units.BadFileError: naming the file when it cannot be opened,
      holds no frame, or its frames are not of `size`.
  """
  cap = cv2.VideoCapture(str(path))
  if not cap.isOpened():
    raise build_units.BadFileError(path, 'cannot open the video (corrupt or '
                                   'not a video)')
  try:
    wanted = iter(frames.tolist())
    target = next(wanted, None)
    index = 0
    while target is not None:
      if not cap.grab():
        if index == 0:
          raise build_units.BadFileError(path, 'no decodable frame (corrupt '
                                         'video)')
        logging.warning('%s: the video has %d frames but its CDF %d; using '
                        'the first %d', path, index, num_expected, index)
        return
      if index == target or retrieve_all:
        ok, bgr = cap.retrieve()
        if not ok:
          raise build_units.BadFileError(path, f'frame {index} cannot be decoded')
        if size is not None and (bgr.shape[1], bgr.shape[0]) != tuple(size):
          raise build_units.BadFileError(
              path, f'frames are {bgr.shape[1]}x{bgr.shape[0]} pixels; this '
              f'camera records {size[0]}x{size[1]} (a re-encoded video?)')
        if index == target:
          yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
          target = next(wanted, None)
      index += 1
  finally:
    cap.release()


def check_mono(unit: Video, world: np.ndarray, cam: h36m_cameras.Camera,
               limit_mm: float) -> float:
  """The largest deviation (mm) of D3_Positions_mono from our transform.

  Args:
    unit: the video (its `mono` file is read).
    world: [F, 32, 3] world positions of `unit.cdf`.
    cam: the published camera.
    limit_mm: fail above this (0: never).

  Returns:
    The largest Euclidean distance over the common frames and all 32 joints.

  Raises:
    build_units.BadFileError: the mono file is unreadable.
    errors.InputError: naming the mono file, above `limit_mm`.
  """
  mono = read_poses(unit.mono)
  n = min(len(mono), len(world))
  deviation = float(np.linalg.norm(
      mono[:n] - cam.world_to_camera(world[:n]), axis=-1).max())
  logging.info('%s: largest deviation from the published cameras %.4f mm',
               unit.mono, deviation)
  if limit_mm > 0 and not deviation <= limit_mm:
    raise errors.InputError(
        f'{unit.mono}: the official camera-frame positions differ from '
        f'{unit.cdf.name} mapped through the published camera {unit.camera_id} '
        f'of {unit.subject} (h36m_cameras.py) by up to {deviation:.2f} mm '
        f'(> mono_check_mm={limit_mm}): mismatched files or cameras?')
  return deviation


def process_video(cfg: Human36mConfig, unit: Video) -> Iterator[tuple]:
  """The examples of one video (module docstring), and side records.

  Args:
    cfg: the builder config.
    unit: the video.

  Yields:
    (split, key, example) tuples; side records 'rejected_examples' (count)
    and 'mono_check' ([file, deviation mm]); 'skipped_files' for a bad mono
    file when not strict.
  """
  world = read_poses(unit.cdf)
  num_poses = len(world)
  cam = h36m_cameras.get_camera(unit.subject, unit.camera_id)
  if unit.mono is not None and cfg.mono_check_mm > 0:
    try:
      yield build_units.side('mono_check', [str(unit.mono), check_mono(
          unit, world, cam, cfg.mono_check_mm)])
    except build_units.BadFileError as e:
      if cfg.strict:
        raise
      yield build_units.skip(e.path, f'{e.reason} (its check is skipped)')
  frames = np.arange(0, num_poses, unit.every)
  first_held_out = len(frames) - num_held_out(len(frames), unit.holdout_fraction)
  joints_3d = cam.world_to_camera(world[frames][:, skeleton.H36M32_TO_SKELETON])
  joints_2d = cam.project(joints_3d)
  visible = np.ones(skeleton.NUM_JOINTS, bool)
  rejected = 0
  for i, (frame, image) in enumerate(read_frames(
      unit.video, frames, num_poses, size=(cam.width, cam.height))):
    try:
      _check_joints(joints_3d[i], joints_2d[i], image.shape)
      lo, hi = joints_2d[i].min(axis=0), joints_2d[i].max(axis=0)
      example = example_format.make_example(
          image, center=(lo + hi) / 2,
          box_size=float(np.max(hi - lo)) * cfg.box_margin,
          crop_size=cfg.crop_size, crop_scale=cfg.crop_scale,
          joints_2d=joints_2d[i], visible=visible, joints_3d=joints_3d[i],
          intrinsics=cam.intrinsics, subject=unit.subject, action=unit.action,
          camera_id=unit.camera_id,
          image_name=f'{unit.subject}/Videos/{unit.video.name}', frame=frame)
    except example_format.InvalidExample:
      rejected += 1
      continue
    split = unit.splits[-1] if i >= first_held_out else unit.splits[0]
    yield split, f'{unit.subject}/{unit.action}.{unit.camera_id}/{frame}', example
  if rejected:
    yield build_units.side('rejected_examples', rejected)


def _check_joints(joints_3d: np.ndarray, joints_2d: np.ndarray,
                  image_shape: tuple[int, ...]) -> None:
  """Raises InvalidExample for NaN, behind-camera or far-off-frame joints."""
  if not (np.all(np.isfinite(joints_3d)) and np.all(np.isfinite(joints_2d))):
    raise example_format.InvalidExample('non-finite joints')
  if not np.all(joints_3d[:, 2] > 0):
    raise example_format.InvalidExample('joints behind the camera')
  h, w = image_shape[:2]
  if np.any(joints_2d < -np.array([w, h])) or np.any(
      joints_2d > 2 * np.array([w, h])):
    raise example_format.InvalidExample('joints far outside the frame')


def _find_file(directory: pathlib.Path, action: str, suffix: str
               ) -> pathlib.Path:
  """`<directory>/<action><suffix>`, or its Photo/WalkDog alias if that exists."""
  path = directory / f'{action}{suffix}'
  base, _, take = action.partition(' ')
  if not path.exists() and base in _ALIASES:
    alias = ' '.join([_ALIASES[base]] + ([take] if take else []))
    if (directory / f'{alias}{suffix}').exists():
      return directory / f'{alias}{suffix}'
  return path


class Human36m(build_units.BeamAware, tfds.core.GeneratorBasedBuilder):
  """Human3.6M person crops with 3D camera-frame joints."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': "A 'holdout' split (the last holdout_fraction of every training "
               "video); S11 'Directions' dropped for all cameras "
               '(skip_sequences); bad files skipped and listed in the metadata '
               'unless strict; D3_Positions_mono check; frame-size check; Beam '
               'builds.',
  }
  BUILDER_CONFIGS = [Human36mConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download Human3.6M from http://vision.imar.ro/human3.6m (registration '
      'required) and unpack the per-subject Videos and D3 Positions archives '
      'into manual_dir:\n' + _LAYOUT)

  def __init__(self, *, file_format: str = 'array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return build_units.dataset_info(
        self, description=__doc__, homepage='http://vision.imar.ro/human3.6m',
        citation='@article{h36m_pami, author = {Ionescu, Catalin and Papava, '
        'Dragos and Olaru, Vlad and Sminchisescu, Cristian}, title = '
        '{Human3.6M: Large Scale Datasets and Predictive Methods for 3D Human '
        'Sensing in Natural Environments}, journal = {IEEE TPAMI}, year = '
        '{2014}}')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    root = pathlib.Path(dl_manager.manual_dir)
    missing = []
    units = (self._find(root, cfg.train_subjects, missing, ('train', 'holdout'))
             + self._find(root, cfg.test_subjects, missing, ('test',)))
    if missing:
      listed = '\n  '.join(missing[:_MAX_LISTED])
      more = (f'\n  ... and {len(missing) - _MAX_LISTED} more'
              if len(missing) > _MAX_LISTED else '')
      raise errors.InputError(
          f'{root} lacks {len(missing)} files or folders that the Human3.6M '
          f'build needs:\n  {listed}{more}\nExpected layout:\n{_LAYOUT}')
    return self._units('human36m', units, functools.partial(process_video, cfg),
                       ('train', 'holdout', 'test'), cfg.strict)

  def _find(self, root: pathlib.Path, subjects: tuple[str, ...],
            missing: list[str], splits: tuple[str, ...]) -> list[Video]:
    """Lists the videos of `subjects`, appending missing paths."""
    cfg = self.builder_config
    train = splits[0] == 'train'
    units = []
    for subject in subjects:
      features = root / subject / 'MyPoseFeatures'
      pose_dir, mono_dir = features / 'D3_Positions', features / 'D3_Positions_mono'
      video_dir = root / subject / 'Videos'
      cdfs = sorted(pose_dir.glob('*.cdf')) if pose_dir.is_dir() else []
      if not cdfs:
        missing.append(f'{pose_dir}/<Action>.cdf (no CDF files)')
      if not video_dir.is_dir():
        missing.append(f'{video_dir}/')
        continue
      for cdf in cdfs:
        action = cdf.stem
        if cfg.actions and not (action in cfg.actions or
                                action.split(' ')[0] in cfg.actions):
          continue
        if f'{subject}/{action}' in cfg.skip_sequences:
          logging.warning('human36m: skipping %s/%s, all cameras (listed in '
                          'skip_sequences; S11 Directions: as VideoPose3D)',
                          subject, action)
          continue
        for cam in cfg.cameras:
          if f'{subject}/{action}.{cam}' in cfg.skip_videos:
            logging.warning('human36m: skipping %s/%s.%s (listed in '
                            'skip_videos)', subject, action, cam)
            continue
          video = _find_file(video_dir, action, f'.{cam}.mp4')
          if not video.exists():
            missing.append(str(video))
          mono = _find_file(mono_dir, action, f'.{cam}.cdf')
          units.append(Video(subject, action, cam, cdf, video,
                             mono if mono.exists() else None,
                             cfg.train_every if train else cfg.test_every,
                             cfg.holdout_fraction if train else 0.0, splits))
    return units

  def _summarize(self, records: dict[str, list[Any]]) -> None:
    rejected = sum(records.get('rejected_examples', []))
    self.info.metadata['rejected_examples'] = rejected
    if rejected:
      logging.warning('human36m: rejected %d invalid examples (NaN, '
                      'behind-camera or out-of-frame joints)', rejected)
    checks = records.get('mono_check', [])
    if checks:
      worst = max(checks, key=lambda c: c[1])
      self.info.metadata['mono_check'] = {
          'files': len(checks), 'max_deviation_mm': worst[1],
          'worst_file': worst[0]}
      logging.info('human36m: D3_Positions_mono check of %d files: largest '
                   'deviation %.4f mm (%s)', len(checks), worst[1], worst[0])
