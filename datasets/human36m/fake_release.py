"""Writes a tiny fake Human3.6M release in the official layout (tests only).

Nothing of the real dataset is used: poses are a hand-made standing figure
(32 joints, world millimetres, z up, near the capture-area origin) that
sways from frame to frame; videos show white dots at the joints' distorted
projections through the published cameras on a dark background; CDF files
hold the variable `Pose` with shape (1, frames, 96) like the release.
"""

import pathlib
from typing import Sequence

import cdflib.cdfwrite
import cv2
import numpy as np

from . import h36m_cameras
from deepskeleton_jax.geometry import skeleton

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
  return (base[None] + sway + t * [15.0, -10.0, 0.0]).astype(np.float32)


def write_cdf(path: pathlib.Path, poses: np.ndarray) -> None:
  """Writes poses [F, 32, 3] as the CDF variable `Pose` of shape (1, F, 96)."""
  data = np.asarray(poses, np.float32).reshape(1, -1, 96)
  cdf = cdflib.cdfwrite.CDF(str(path), cdf_spec={}, delete=True)
  cdf.write_var({'Variable': 'Pose', 'Data_Type': cdflib.cdfwrite.CDF.CDF_FLOAT,
                 'Num_Elements': 1, 'Rec_Vary': True,
                 'Dim_Sizes': list(data.shape[1:])}, var_data=data)
  cdf.close()


def write_video(path: pathlib.Path, subject: str, camera_id: str,
                poses: np.ndarray, radius: int = 6) -> None:
  """Writes an mp4 ('mp4v') with dots at the 16 joints' projections."""
  cam = h36m_cameras.get_camera(subject, camera_id)
  joints = poses[:, skeleton.H36M32_TO_SKELETON].astype(np.float64)
  uv = cam.project(cam.world_to_camera(joints))
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 50,
                           (cam.width, cam.height))
  if not writer.isOpened():
    raise RuntimeError(f'{path}: OpenCV cannot write mp4v videos here')
  for points in uv:
    frame = np.full((cam.height, cam.width, 3), 40, np.uint8)
    for x, y in points:
      # Continuous pixel (x, y) lies in OpenCV's integer pixel (x - .5, y - .5).
      cv2.circle(frame, (int(round(x - 0.5)), int(round(y - 0.5))), radius,
                 (255, 255, 255), -1)
    writer.write(frame)
  writer.release()


def make_release(root: pathlib.Path, actions: dict[str, Sequence[str]],
                 cameras: Sequence[str], num_frames: int = 8,
                 video_frames: dict[tuple[str, str, str], int] | None = None
                 ) -> dict[tuple[str, str], np.ndarray]:
  """Writes a fake release under `root`.

  Args:
    root: the manual_dir to fill.
    actions: per subject (e.g. 'S1') its action names (e.g. 'Walking 1').
    cameras: camera ids to write videos for.
    num_frames: frames per CDF.
    video_frames: optional (subject, action, camera) -> number of video frames
      (default `num_frames`), to make short videos.

  Returns:
    (subject, action) -> the float32 world poses [num_frames, 32, 3] written.
  """
  video_frames = video_frames or {}
  poses = {}
  for s_index, (subject, names) in enumerate(sorted(actions.items())):
    pose_dir = root / subject / 'MyPoseFeatures' / 'D3_Positions'
    video_dir = root / subject / 'Videos'
    pose_dir.mkdir(parents=True, exist_ok=True)
    video_dir.mkdir(parents=True, exist_ok=True)
    for a_index, action in enumerate(names):
      world = world_poses(num_frames, seed=100 * s_index + a_index)
      write_cdf(pose_dir / f'{action}.cdf', world)
      for cam in cameras:
        n = video_frames.get((subject, action, cam), num_frames)
        write_video(video_dir / f'{action}.{cam}.mp4', subject, cam, world[:n])
      poses[subject, action] = world
  return poses
