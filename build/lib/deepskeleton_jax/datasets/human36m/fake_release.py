"""Writes a tiny fake Human3.6M release in the official layout (tests only).

Nothing of the real dataset is used: poses are a hand-made standing figure
(32 joints, world millimetres, z up, near the capture-area origin) that
sways from frame to frame; videos show white dots at the joints' distorted
projections through the published cameras on a dark background; CDF files
hold the variable `Pose` with shape (1, frames, 96) like the release.

Names and shapes follow the official release: subjects S1 S5 S6 S7 S8 S9
S11, the four camera ids, mp4 videos at 50 fps of the published frame sizes
(1000x1002 for 54138969 and 60457274, 1000x1000 for 55011271 and 58860488),
action names with their take suffixes ('Walking', 'Walking 1', 'SittingDown
2', ...), both spellings Photo/TakingPhoto and WalkDog/WalkingDog, and, where
asked, `D3_Positions_mono/<Action>.<camera_id>.cdf` camera-frame positions.
"""

import pathlib
from typing import Sequence

import cdflib.cdfwrite
import cv2
import numpy as np

from deepskeleton_jax.geometry import skeleton
from . import h36m_cameras

FPS = 50

# Sequence names (CDF stems) of the kind the release has, per subject: several
# takes per action, S1's 'TakingPhoto'/'WalkingDog' and the others' 'Photo'/
# 'WalkDog', and S11's 'Directions' (the sequence the build drops).
RELEASE_ACTIONS: dict[str, tuple[str, ...]] = {
    'S1': ('Walking', 'Walking 1', 'TakingPhoto', 'TakingPhoto 1',
           'WalkingDog 1', 'SittingDown 2'),
    'S5': ('Walking 1', 'Photo', 'Photo 2', 'WalkDog', 'WalkTogether 1',
           'SittingDown 2'),
    'S9': ('Walking', 'Walking 1', 'Photo 1', 'WalkDog 1', 'WalkTogether 1',
           'SittingDown'),
    'S11': ('Directions', 'Directions 1', 'Walking 1', 'Photo 1', 'WalkDog',
            'SittingDown 2'),
}

# Videos spelled unlike their CDF (the release mixes the two spellings).
VIDEO_SPELLINGS: dict[tuple[str, str], str] = {
    ('S5', 'Photo 2'): 'TakingPhoto 2',
    ('S9', 'WalkDog 1'): 'WalkingDog 1',
}

# The 16 joints of skeleton.JOINT_NAMES for a standing figure facing -y
# (x to its left is the world's +x), millimetres, z up.
_SKELETON_16 = np.array([
    [-110, 0, 90], [-110, 20, 520], [-120, 0, 930],    # r ankle, knee, hip
    [120, 0, 930], [110, 20, 520], [110, 0, 90],       # l hip, knee, ankle
    [0, 0, 930], [0, 0, 1450], [0, -20, 1560],        # pelvis, thorax, neck
    [0, 0, 1760],                                      # head top
    [-260, -60, 930], [-230, -20, 1170], [-180, 0, 1430],  # r wrist .. shoulder
    [180, 0, 1430], [230, -20, 1170], [260, -60, 930],     # l shoulder .. wrist
], np.float64)


def template_pose() -> np.ndarray:
  """[32, 3] world mm: the 16 joints in their Human3.6M slots, others copied."""
  pose = np.zeros((32, 3))
  pose[:] = _SKELETON_16[skeleton.JOINT_INDEX['pelvis']]
  pose[skeleton.H36M32_TO_SKELETON] = _SKELETON_16
  return pose


def world_poses(num_frames: int, seed: int) -> np.ndarray:
  """[num_frames, 32, 3] float32 world mm: the template, moved and swaying."""
  rng = np.random.default_rng(seed)
  base = template_pose() + [rng.uniform(-300, 300), rng.uniform(-300, 300), 0]
  t = np.arange(num_frames)[:, None, None]
  sway = np.sin(t * 0.7 + np.arange(32)[None, :, None]) * [40.0, 30.0, 10.0]
  # A walk about the capture area (about 15 mm per frame at first) that stays
  # in every camera's view however long the video.
  walk = np.concatenate([800 * np.sin(t / 53.0), -600 * np.sin(t / 59.0),
                         np.zeros_like(t, np.float64)], axis=-1)
  return (base[None] + sway + walk).astype(np.float32)


def write_cdf(path: pathlib.Path, poses: np.ndarray) -> None:
  """Writes poses [F, 32, 3] as the CDF variable `Pose` of shape (1, F, 96)."""
  data = np.asarray(poses, np.float32).reshape(1, -1, 96)
  cdf = cdflib.cdfwrite.CDF(str(path), cdf_spec={}, delete=True)
  cdf.write_var({'Variable': 'Pose', 'Data_Type': cdflib.cdfwrite.CDF.CDF_FLOAT,
                 'Num_Elements': 1, 'Rec_Vary': True,
                 'Dim_Sizes': list(data.shape[1:])}, var_data=data)
  cdf.close()


def _backgrounds(width: int, height: int, textured: bool) -> list[np.ndarray]:
  """Frame backgrounds: flat dark grey, or a texture with sensor-like noise
  (7 noise draws, cycled), so that decoding costs about what real video does."""
  if not textured:
    return [np.full((height, width, 3), 40, np.uint8)]
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  base = (70 + 25 * np.sin(xx / 37) + 25 * np.cos(yy / 23) +
          20 * np.sin((xx + yy) / 9))[..., None].repeat(3, axis=-1)
  rng = np.random.default_rng(0)
  return [np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
          for _ in range(7)]


def write_video(path: pathlib.Path, subject: str, camera_id: str,
                poses: np.ndarray, radius: int = 6, textured: bool = False
                ) -> None:
  """Writes an mp4 ('mp4v', 50 fps, the camera's published frame size) with
  dots at the 16 joints' projections (on a textured, noisy background if
  `textured`, for benchmarks)."""
  cam = h36m_cameras.get_camera(subject, camera_id)
  joints = poses[:, skeleton.H36M32_TO_SKELETON].astype(np.float64)
  uv = cam.project(cam.world_to_camera(joints))
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), FPS,
                           (cam.width, cam.height))
  if not writer.isOpened():
    raise RuntimeError(f'{path}: OpenCV cannot write mp4v videos here')
  backgrounds = _backgrounds(cam.width, cam.height, textured)
  for i, points in enumerate(uv):
    frame = backgrounds[i % len(backgrounds)].copy()
    for x, y in points:
      # Continuous pixel (x, y) lies in OpenCV's integer pixel (x - .5, y - .5).
      cv2.circle(frame, (int(round(x - 0.5)), int(round(y - 0.5))), radius,
                 (255, 255, 255), -1)
    writer.write(frame)
  writer.release()


def write_mono_cdf(path: pathlib.Path, subject: str, camera_id: str,
                   poses: np.ndarray, error_mm: float = 0.0) -> None:
  """Writes D3_Positions_mono: `poses` in the camera's frame (+ an error).

  Args:
    path: the .cdf file.
    subject, camera_id: the published camera.
    poses: [F, 32, 3] world mm.
    error_mm: shifts one joint (the head top) of every frame by this many mm
      along x, to make an inconsistent file.
  """
  cam = h36m_cameras.get_camera(subject, camera_id)
  mono = cam.world_to_camera(np.asarray(poses, np.float64))
  mono[:, skeleton.H36M32_TO_SKELETON[skeleton.JOINT_INDEX['head_top']], 0] += error_mm
  write_cdf(path, mono)


def make_release(root: pathlib.Path,
                 actions: dict[str, Sequence[str]] | None = None,
                 cameras: Sequence[str] = h36m_cameras.CAMERA_IDS,
                 num_frames: int = 8,
                 video_frames: dict[tuple[str, str, str], int] | None = None,
                 video_names: dict[tuple[str, str], str] | None = None,
                 mono: bool = False,
                 mono_error_mm: dict[tuple[str, str, str], float] | None = None,
                 textured: bool = False,
                 ) -> dict[tuple[str, str], np.ndarray]:
  """Writes a fake release under `root`.

  Args:
    root: the manual_dir to fill.
    actions: per subject (e.g. 'S1') its sequence names (e.g. 'Walking 1');
      default RELEASE_ACTIONS.
    cameras: camera ids to write videos for.
    num_frames: frames per CDF (or a dict subject -> frames).
    video_frames: optional (subject, action, camera) -> number of video frames
      (default `num_frames`), to make short videos.
    video_names: (subject, action) -> the action as the video file spells it
      (default VIDEO_SPELLINGS; only for the sequences written).
    mono: also write D3_Positions_mono files.
    mono_error_mm: (subject, action, camera) -> error of that mono file.
    textured: textured, noisy video backgrounds (benchmarks; slower to write).

  Returns:
    (subject, action) -> the float32 world poses [num_frames, 32, 3] written.
  """
  actions = RELEASE_ACTIONS if actions is None else actions
  video_names = VIDEO_SPELLINGS if video_names is None else video_names
  video_frames = video_frames or {}
  mono_error_mm = mono_error_mm or {}
  poses = {}
  for s_index, (subject, names) in enumerate(sorted(actions.items())):
    features = root / subject / 'MyPoseFeatures'
    video_dir = root / subject / 'Videos'
    for d in (features / 'D3_Positions', video_dir) + (
        (features / 'D3_Positions_mono',) if mono else ()):
      d.mkdir(parents=True, exist_ok=True)
    for a_index, action in enumerate(names):
      n = num_frames[subject] if isinstance(num_frames, dict) else num_frames
      world = world_poses(n, seed=100 * s_index + a_index)
      write_cdf(features / 'D3_Positions' / f'{action}.cdf', world)
      video_action = video_names.get((subject, action), action)
      for cam in cameras:
        m = video_frames.get((subject, action, cam), n)
        write_video(video_dir / f'{video_action}.{cam}.mp4', subject, cam,
                    world[:m], textured=textured)
        if mono:
          write_mono_cdf(features / 'D3_Positions_mono' / f'{action}.{cam}.cdf',
                         subject, cam, world,
                         mono_error_mm.get((subject, action, cam), 0.0))
      poses[subject, action] = world
  return poses
