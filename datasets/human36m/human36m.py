"""human36m: Human3.6M (Ionescu et al., TPAMI 2014) from the official release.

Manual download (the licence forbids redistribution): unpack the official
per-subject archives (Videos, D3 Positions) into `manual_dir`:

  <manual_dir>/S1/Videos/<Action>.<camera_id>.mp4
  <manual_dir>/S1/MyPoseFeatures/D3_Positions/<Action>.cdf
  ... the same for S5 S6 S7 S8 S9 S11.

Protocol (the paper's protocol 1): `train` = S1 S5 S6 S7 S8, every
`train_every`-th frame (default 5); `test` = S9 S11, every `test_every`-th
frame (default 64); all four cameras. Every action is the CDF file's stem
(with its take suffix, e.g. 'Walking 1'); its video is
`<Action>.<camera_id>.mp4` (the spellings Photo/TakingPhoto and
WalkDog/WalkingDog are accepted for each other).

Conventions:
- 3D: the CDF variable `Pose` (world frame, mm) reshaped to (frames, 32, 3),
  mapped to camera frames with the published cameras
  (`deepskeleton_jax.h36m_cameras`), reduced to the 16 joints by
  `skeleton.H36M32_TO_SKELETON` (thorax root). Stored joints_3d are absolute
  camera-frame millimetres.
- 2D: projection with the cameras' radial and tangential distortion
  (`camera.project_distorted`), i.e. where the joints are in the video frame.
  Stored intrinsics are the pinhole part (f, c) only, so projecting joints_3d
  through them differs from joints_2d by the lens distortion (a few pixels
  at most near the image centre).
- Person box: the square around the bounding box of the 16 projected joints,
  side = its larger extent x `box_margin` (default 1.25); stored crop = box x
  `crop_scale` (1.5) resampled to `crop_size` (256).
- Frames are decoded with OpenCV sequentially (skipped frames are grabbed,
  not converted), nothing is written to disk.

Known data problems: videos listed in `skip_videos` are skipped with a log
(default: S11 Directions camera 54138969, damaged in the official release);
a video shorter than its CDF uses the common frames and logs the shortfall;
examples with NaN, behind-camera or far-out-of-frame joints are rejected and
counted in the log. Missing files are reported together with the expected
layout before anything is written; a corrupt CDF or video raises an error
naming the file.
"""

import dataclasses
import pathlib
from typing import Iterator

from absl import logging
import cdflib
import cv2
import numpy as np
import tensorflow_datasets as tfds

from deepskeleton_jax.data import example_format
from . import h36m_cameras
from deepskeleton_jax.geometry import skeleton

_LAYOUT = """\
<manual_dir>/
  S1/Videos/<Action>.<camera_id>.mp4           e.g. 'S1/Videos/Walking 1.54138969.mp4'
  S1/MyPoseFeatures/D3_Positions/<Action>.cdf  e.g. 'S1/MyPoseFeatures/D3_Positions/Walking 1.cdf'
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
    cameras: camera ids to use.
    actions: if not empty, keep only these actions (a CDF stem such as
      'Walking 1', or its base name 'Walking' for every take).
    crop_size, crop_scale, box_margin: the stored crop (module docstring).
    skip_videos: '<subject>/<Action>.<camera_id>' videos to skip.
  """
  train_subjects: tuple[str, ...] = ('S1', 'S5', 'S6', 'S7', 'S8')
  test_subjects: tuple[str, ...] = ('S9', 'S11')
  train_every: int = 5
  test_every: int = 64
  cameras: tuple[str, ...] = h36m_cameras.CAMERA_IDS
  actions: tuple[str, ...] = ()
  crop_size: int = 256
  crop_scale: float = 1.5
  box_margin: float = 1.25
  skip_videos: tuple[str, ...] = ('S11/Directions.54138969',)

  def __post_init__(self):
    for f in ('train_subjects', 'test_subjects', 'cameras', 'actions',
              'skip_videos'):
      value = getattr(self, f)
      setattr(self, f, (value,) if isinstance(value, str) else tuple(value))
    for s in self.train_subjects + self.test_subjects:
      if s not in h36m_cameras.SUBJECTS:
        raise ValueError(f'subjects must be among {h36m_cameras.SUBJECTS}, '
                         f'got {s!r}')
    for c in self.cameras:
      if c not in h36m_cameras.CAMERA_IDS:
        raise ValueError(f'cameras must be among {h36m_cameras.CAMERA_IDS}, '
                         f'got {c!r}')
    for f in ('train_every', 'test_every', 'crop_size'):
      if int(getattr(self, f)) < 1:
        raise ValueError(f'{f} must be >= 1, got {getattr(self, f)}')
    for f in ('crop_scale', 'box_margin'):
      if not float(getattr(self, f)) > 0:
        raise ValueError(f'{f} must be positive, got {getattr(self, f)}')


@dataclasses.dataclass(frozen=True)
class _Sequence:
  subject: str
  action: str
  cdf: pathlib.Path
  videos: tuple[tuple[str, pathlib.Path | None], ...]  # None: skipped.


def read_poses(path: pathlib.Path) -> np.ndarray:
  """Reads a D3_Positions CDF as [frames, 32, 3] world millimetres.

  Args:
    path: the .cdf file.

  Returns:
    float64 [F, 32, 3].

  Raises:
    ValueError: naming the file when it is not a readable CDF with a `Pose`
      variable of 96 values per frame.
  """
  try:
    pose = cdflib.CDF(str(path)).varget('Pose')
  except Exception as e:  # pylint: disable=broad-except
    # cdflib raises many kinds of errors on damaged files; name the file.
    raise ValueError(f'{path}: not a readable CDF file with a variable "Pose" '
                     f'({type(e).__name__}: {e})') from e
  pose = np.asarray(pose, np.float64)
  if pose.size == 0 or pose.size % 96:
    raise ValueError(f'{path}: variable "Pose" has shape {pose.shape}; '
                     'expected 96 values (32 joints x 3) per frame')
  return pose.reshape(-1, 32, 3)


def read_frames(path: pathlib.Path, frames: np.ndarray, num_expected: int
                ) -> Iterator[tuple[int, np.ndarray]]:
  """Decodes the listed frames of a video, in order, without storing others.

  Args:
    path: the video file.
    frames: increasing frame indices to return.
    num_expected: the number of pose frames (for the shortfall log).

  Yields:
    (frame index, [H, W, 3] uint8 RGB image).

  Raises:
    ValueError: naming the file when it cannot be opened or holds no frame.
  """
  cap = cv2.VideoCapture(str(path))
  if not cap.isOpened():
    raise ValueError(f'{path}: cannot open the video (corrupt or not a video)')
  try:
    wanted = iter(frames.tolist())
    target = next(wanted, None)
    index = 0
    while target is not None:
      if not cap.grab():
        if index == 0:
          raise ValueError(f'{path}: no decodable frame (corrupt video)')
        logging.warning('%s: the video has %d frames but its CDF %d; using '
                        'the first %d', path, index, num_expected, index)
        return
      if index == target:
        ok, bgr = cap.retrieve()
        if not ok:
          raise ValueError(f'{path}: frame {index} cannot be decoded')
        yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        target = next(wanted, None)
      index += 1
  finally:
    cap.release()


class Human36m(tfds.core.GeneratorBasedBuilder):
  """Human3.6M person crops with 3D camera-frame joints."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [Human36mConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download Human3.6M from http://vision.imar.ro/human3.6m (registration '
      'required) and unpack the per-subject Videos and D3 Positions archives '
      'into manual_dir:\n' + _LAYOUT)

  def __init__(self, *, file_format: str = 'array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return example_format.dataset_info(
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
    train = self._find(root, cfg.train_subjects, missing)
    test = self._find(root, cfg.test_subjects, missing)
    if missing:
      listed = '\n  '.join(missing[:_MAX_LISTED])
      more = (f'\n  ... and {len(missing) - _MAX_LISTED} more'
              if len(missing) > _MAX_LISTED else '')
      raise ValueError(f'{root} lacks {len(missing)} files or folders that '
                       f'the Human3.6M build needs:\n  {listed}{more}\n'
                       f'Expected layout:\n{_LAYOUT}')
    return {'train': self._generate_examples(train, cfg.train_every),
            'test': self._generate_examples(test, cfg.test_every)}

  def _find(self, root: pathlib.Path, subjects: tuple[str, ...],
            missing: list[str]) -> list[_Sequence]:
    """Lists the sequences of `subjects`, appending missing paths."""
    cfg = self.builder_config
    sequences = []
    for subject in subjects:
      pose_dir = root / subject / 'MyPoseFeatures' / 'D3_Positions'
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
        videos = []
        for cam in cfg.cameras:
          if f'{subject}/{action}.{cam}' in cfg.skip_videos:
            videos.append((cam, None))
            continue
          path = video_dir / f'{action}.{cam}.mp4'
          base, _, take = action.partition(' ')
          if not path.exists() and base in _ALIASES:
            alias = ' '.join([_ALIASES[base]] + ([take] if take else []))
            if (video_dir / f'{alias}.{cam}.mp4').exists():
              path = video_dir / f'{alias}.{cam}.mp4'
          if not path.exists():
            missing.append(str(path))
          videos.append((cam, path))
        sequences.append(_Sequence(subject, action, cdf, tuple(videos)))
    return sequences

  def _generate_examples(self, sequences: list[_Sequence], every: int):
    cfg = self.builder_config
    rejected = 0
    visible = np.ones(skeleton.NUM_JOINTS, bool)
    for seq in sequences:
      world = read_poses(seq.cdf)
      num_poses = len(world)
      frames = np.arange(0, num_poses, every)
      world = world[frames][:, skeleton.H36M32_TO_SKELETON]
      for cam_id, video in seq.videos:
        if video is None:
          logging.warning('human36m: skipping %s/%s.%s (listed in skip_videos)',
                          seq.subject, seq.action, cam_id)
          continue
        cam = h36m_cameras.get_camera(seq.subject, cam_id)
        joints_3d = cam.world_to_camera(world)
        joints_2d = cam.project(joints_3d)
        for i, (frame, image) in enumerate(read_frames(video, frames,
                                                       num_poses)):
          try:
            _check_joints(joints_3d[i], joints_2d[i], image.shape)
            lo, hi = joints_2d[i].min(axis=0), joints_2d[i].max(axis=0)
            example = example_format.make_example(
                image, center=(lo + hi) / 2,
                box_size=float(np.max(hi - lo)) * cfg.box_margin,
                crop_size=cfg.crop_size, crop_scale=cfg.crop_scale,
                joints_2d=joints_2d[i], visible=visible,
                joints_3d=joints_3d[i], intrinsics=cam.intrinsics,
                subject=seq.subject, action=seq.action, camera_id=cam_id,
                image_name=f'{seq.subject}/Videos/{video.name}', frame=frame)
          except example_format.InvalidExample:
            rejected += 1
            continue
          yield f'{seq.subject}/{seq.action}.{cam_id}/{frame}', example
    if rejected:
      logging.warning('human36m: rejected %d invalid examples (NaN, '
                      'behind-camera or out-of-frame joints)', rejected)


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
