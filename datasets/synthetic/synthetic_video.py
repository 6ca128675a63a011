"""A synthetic video: one person walking across a fixed scene, with exact labels.

For testing and demonstrating `--mode=predict --config.predict.video=...`:
the same procedural body and renderer as the synthetic dataset
(`pose_sampler`, `synthetic_render`), posed by a walking cycle whose phase
advances every frame, translated along the direction the person faces, seen
by a fixed pinhole camera standing to the side. Every frame comes with its
2D joints (frame pixels, continuous convention) and the person box the video
predictor's tracker would give from them (a square of `margin` x the joints'
extent around their centre), so the predicted boxes and joints can be
scored. Optional camera shake (`jitter_px`) moves the whole image by a
random offset per frame, the kind of jitter temporal smoothing removes.
Each clip also gives its camera's intrinsics and five face points (nose,
eyes, ears on the rendered head sphere) so that COCO-17 keypoints can be
written from the truth (`coco17_2d`); `side_by_side` puts clips next to each
other: a video of several people with their joints and boxes.

Load it with `registry.load_module('synthetic', 'synthetic_video')`.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from . import pose_sampler
from . import synthetic_render
from deepskeleton_jax.geometry import coco17
from deepskeleton_jax.geometry import skeleton

J = skeleton.JOINT_INDEX


@dataclasses.dataclass(frozen=True)
class Clip:
  """Frames and labels of a synthetic video."""
  frames: np.ndarray     # [T, H, W, 3] uint8 RGB
  joints_2d: np.ndarray  # [T, 16, 2] frame pixels
  joints_3d: np.ndarray  # [T, 16, 3] mm, camera frame
  boxes: np.ndarray      # [T, 4] x0 y0 x1 y1, square, `margin` x the joints' extent
  fps: float
  intrinsics: np.ndarray | None = None  # [T, 4] fx fy cx cy, frame pixels (cx, cy shake)
  face_2d: np.ndarray | None = None     # [T, 5, 2] nose, l_eye, r_eye, l_ear, r_ear


@dataclasses.dataclass(frozen=True)
class Group:
  """Clips side by side: one video of P people (P clips of the same length)."""
  frames: np.ndarray     # [T, H, W, 3] uint8 RGB
  joints_2d: np.ndarray  # [P, T, 16, 2] frame pixels
  boxes: np.ndarray      # [P, T, 4]
  face_2d: np.ndarray    # [P, T, 5, 2]
  fps: float


def face_points(person: pose_sampler.Person, joints: np.ndarray,
                extras: dict[str, np.ndarray]) -> np.ndarray:
  """Nose, eyes and ears [5, 3] on the head sphere the renderer draws.

  The head is a sphere of radius r around `head_center`; with `up` from the
  upper neck to the head top, `forward` the face's direction and `left` =
  up x forward: ears at the centre +- r left (a little behind), eyes 0.85 r
  forward, 0.35 r apart from the middle and 0.15 r up, the nose r forward and
  0.15 r down. A plausible face, independent of `coco17`'s mapping back.
  """
  up = joints[J['head_top']] - joints[J['upper_neck']]
  up /= np.linalg.norm(up)
  forward = extras['head_forward'] / np.linalg.norm(extras['head_forward'])
  left = np.cross(up, forward)
  c, r = extras['head_center'], person.radii['head']
  return np.stack([c + r * (forward - 0.15 * up),
                   c + r * (0.85 * forward + 0.35 * left + 0.15 * up),
                   c + r * (0.85 * forward - 0.35 * left + 0.15 * up),
                   c + r * (left - 0.1 * forward), c + r * (-left - 0.1 * forward)])


def coco17_2d(joints_2d: np.ndarray, face_2d: np.ndarray) -> np.ndarray:
  """[..., 17, 2] COCO-17 keypoints of the truth: face points, then our limb joints."""
  out = np.zeros(joints_2d.shape[:-2] + (coco17.NUM_COCO17, 2), np.float32)
  out[..., :5, :] = face_2d
  for ours, coco in coco17.DIRECT.items():
    out[..., coco, :] = joints_2d[..., ours, :]
  return out


def side_by_side(clips: list[Clip]) -> Group:
  """One video of the clips' frames next to each other (left to right).

  Args:
    clips: clips of the same length, height and frame rate.

  Returns:
    A `Group`: each person's joints, face points and boxes shifted by the
    widths of the clips to its left.
  """
  offsets = np.cumsum([0] + [c.frames.shape[2] for c in clips[:-1]]).astype(np.float32)
  shift = lambda x, dx: x + np.array([dx, 0.0], np.float32)  # pylint: disable=unnecessary-lambda-assignment
  return Group(
      frames=np.concatenate([c.frames for c in clips], axis=2),
      joints_2d=np.stack([shift(c.joints_2d, dx) for c, dx in zip(clips, offsets)]),
      boxes=np.stack([c.boxes + np.array([dx, 0, dx, 0], np.float32)
                      for c, dx in zip(clips, offsets)]),
      face_2d=np.stack([shift(c.face_2d, dx) for c, dx in zip(clips, offsets)]),
      fps=clips[0].fps)


def square_box(joints_2d: np.ndarray, margin: float) -> np.ndarray:
  """[..., 4] square box of side `margin` x the joints' larger extent, same centre."""
  lo, hi = joints_2d.min(axis=-2), joints_2d.max(axis=-2)
  centre, half = (lo + hi) / 2, margin * np.max(hi - lo, axis=-1, keepdims=True) / 2
  return np.concatenate([centre - half, centre + half], axis=-1).astype(np.float32)


def _walk_angles(base: dict[str, float], phase: float, amp: float) -> dict[str, float]:
  """`base` angles with the legs and arms of the walking cycle at `phase`."""
  a = dict(base)
  for s, sign in (('l', 1.0), ('r', -1.0)):
    swing = sign * np.sin(phase)
    a[f'{s}_hip_flex'] = amp * swing
    a[f'{s}_knee'] = 5 + 55 * max(0.0, np.sin(phase * sign + 1.2)) ** 2
    a[f'{s}_sh_flex'] = -0.8 * amp * swing
  return a


def _camera(yaw: float, distance: float, focal: float, centre_px: np.ndarray,
            look_at: np.ndarray) -> pose_sampler.Camera:
  rotation = (pose_sampler._rx(8.0) @ np.diag([1.0, -1.0, -1.0])  # pylint: disable=protected-access
              @ pose_sampler._ry(-yaw))  # pylint: disable=protected-access
  translation = np.array([0.0, 0.0, distance]) - rotation @ look_at
  return pose_sampler.Camera(rotation=rotation, translation=translation,
                             intrinsics=np.array([focal, focal, *centre_px]), view='side')


def render_clip(num_frames: int = 30, height: int = 192, width: int = 256,
                fps: float = 25.0, seed: int = 0, jitter_px: float = 0.0,
                margin: float = 1.25, person_height: float = 0.7,
                speed_mps: float = 0.9) -> Clip:
  """Renders a person walking across the frame.

  Args:
    num_frames: T.
    height: frame height H in pixels.
    width: frame width W in pixels.
    fps: frame rate (one stride per second).
    seed: random seed (person, clothes, scene, light, shake).
    jitter_px: standard deviation of the per-frame camera shake, pixels.
    margin: box side / the 2D joints' larger extent.
    person_height: the standing person's height / H (about).
    speed_mps: walking speed, metres per second.

  Returns:
    A `Clip`.
  """
  rng = np.random.default_rng([seed, 7])
  person = pose_sampler.sample_person(rng)
  appearance = synthetic_render.sample_appearance(rng)
  base = pose_sampler.sample_angles(rng, 'Walk')
  base.update(spine_twist=0.0, spine_lat=0.0, neck_twist=0.0)
  side = max(height, width)
  background = synthetic_render.random_background(rng, side)
  light = np.array([0.4, -0.6, -1.0]) / np.linalg.norm([0.4, -0.6, -1.0])
  ambient, diffuse = np.full(3, 0.45), np.full(3, 0.55)
  distance = 4000.0
  focal = person_height * height * distance / person.height
  speed = 1000.0 * speed_mps / fps  # mm per frame
  travel = speed * (num_frames - 1)
  frames, joints_2d, joints_3d, intrinsics, faces = [], [], [], [], []
  for t in range(num_frames):
    joints, extras = pose_sampler.forward_kinematics(
        person, _walk_angles(base, 2 * np.pi * t / fps, 28.0))
    shift = np.array([0.0, 0.0, speed * t - travel / 2])  # the person faces +z
    joints, extras = joints + shift, {k: (v + shift if k != 'head_forward' else v)
                                      for k, v in extras.items()}
    shake = rng.normal(0.0, jitter_px, size=2) if jitter_px > 0 else np.zeros(2)
    cam = _camera(75.0, distance, focal, np.array([width / 2, height * 0.55]) + shake,
                  np.array([0.0, 0.0, 0.0]))
    image = background.copy()
    depth = np.full((side, side), np.inf, np.float32)
    head_axes = (cam.rotation @ (joints[J['head_top']] - joints[J['upper_neck']]),
                 cam.rotation @ extras['head_forward'])
    head_axes = tuple(h / np.linalg.norm(h) for h in head_axes)
    prims = synthetic_render.body_primitives(person, joints, extras, appearance)
    synthetic_render.render_person(image, depth, cam, prims, appearance, light, ambient,
                                   diffuse, head_axes)
    image = cv2.GaussianBlur(image, (0, 0), 0.5) + rng.normal(0.0, 2.0, image.shape)
    frames.append(np.clip(image[:height, :width], 0, 255).astype(np.uint8))
    cam_pts = cam.to_camera(joints)
    joints_3d.append(cam_pts)
    joints_2d.append(cam_pts[:, :2] / cam_pts[:, 2:3] * focal + cam.intrinsics[2:])
    face = cam.to_camera(face_points(person, joints, extras))
    faces.append(face[:, :2] / face[:, 2:3] * focal + cam.intrinsics[2:])
    intrinsics.append(cam.intrinsics)
  joints_2d = np.asarray(joints_2d, np.float32)
  return Clip(frames=np.stack(frames), joints_2d=joints_2d,
              joints_3d=np.asarray(joints_3d, np.float32),
              boxes=square_box(joints_2d, margin), fps=float(fps),
              intrinsics=np.asarray(intrinsics, np.float32),
              face_2d=np.asarray(faces, np.float32))


def write_video(path: str, frames: np.ndarray, fps: float) -> None:
  """Writes [T, H, W, 3] uint8 RGB frames as a video OpenCV reads ('mp4v' or 'MJPG').

  Args:
    path: output file; `.avi` is written with MJPG (near lossless at high
      quality), anything else with mp4v.
    frames: the frames.
    fps: frame rate stored in the file.
  """
  h, w = frames.shape[1:3]
  codec = 'MJPG' if path.endswith('.avi') else 'mp4v'
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, (w, h))
  if not writer.isOpened():
    raise OSError(f'cannot write video {path}')
  for frame in frames:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
