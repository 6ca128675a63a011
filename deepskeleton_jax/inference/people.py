"""Per-person results of a video: poses over time, camera-space root, smoothing, files.

Each person found in a frame (`Found`: box, 2D joints, confidences, the
hypotheses, the chosen pose) gets, from `finish`, the camera-space position
of its root joint (the thorax): the chosen root-relative hypothesis is fitted
to the 2D joints with the pinhole camera (`matching.fit_root_translation`:
the translation T whose projection of `pose + T` best matches the 2D,
each joint weighted by its confidence), and `root_camera_mm = pose[root] + T`
(NaN, null in the JSON, when the fit puts it behind the camera).
The camera is `config.predict.intrinsics` ("fx fy cx cy", frame pixels) or,
without it, a pinhole with `config.predict.fov_deg` (default 60 degrees)
across the frame's longer side, centred: f = (longer side / 2) /
tan(fov / 2). A wrong focal length scales the depth and leaves the root's
image position: depth is proportional to f for a flat pose, about so for a
person (5% off at half the synthetic clip's f, tests/people_test.py).

`assemble` gathers the frames into one `PersonTrack` per id; `smooth_people`
smooths each one's 2D joints, 3D pose and root over time like the one-person
tracks of before (segments split where the person is missing);
`save_npz` / `load_people` write and read `<name>_poses.npz`, and
`load_people` is the one call that gives every person's poses over time, root
trajectory and frame rate (what e.g. a BVH writer needs).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import matching
from deepskeleton_jax.inference import predictor
from deepskeleton_jax.inference import smoothing

K = skeleton.NUM_JOINTS


@dataclasses.dataclass
class Found:
  """One person in one frame: raw (unsmoothed) results."""
  id: int
  box: np.ndarray         # [4] the crop's box, frame pixels
  joints_2d: np.ndarray   # [16, 2] frame pixels (hourglass or keypoints file)
  confidence: np.ndarray  # [16] detection confidences or the file's scores
  hyps: np.ndarray        # [H, 16, 3] mm, root-relative
  chosen: int
  pose: np.ndarray        # [16, 3] mm, the chosen hypothesis
  root_camera_mm: np.ndarray = dataclasses.field(
      default_factory=lambda: np.full(3, np.nan, np.float32))


@dataclasses.dataclass
class PersonTrack:
  """One person over the T frames of a video; NaN (and `present` False) where unseen.

  `joints_2d`, `joints_3d` and `root_camera_mm` are smoothed (after
  `smooth_people`; raw before); the `*_raw` fields are as predicted.
  """
  id: int
  fps: float
  present: np.ndarray           # [T] bool
  boxes: np.ndarray             # [T, 4]
  confidence: np.ndarray        # [T, 16]
  hypotheses: np.ndarray        # [T, H, 16, 3] mm
  chosen: np.ndarray            # [T] int32, -1 where unseen
  joints_2d_raw: np.ndarray     # [T, 16, 2] frame pixels
  joints_3d_raw: np.ndarray     # [T, 16, 3] mm, root-relative
  root_camera_mm_raw: np.ndarray  # [T, 3] mm, camera frame
  joints_2d: np.ndarray
  joints_3d: np.ndarray
  root_camera_mm: np.ndarray


ARRAY_FIELDS = ('present', 'boxes', 'confidence', 'hypotheses', 'chosen', 'joints_2d_raw',
                'joints_3d_raw', 'root_camera_mm_raw', 'joints_2d', 'joints_3d',
                'root_camera_mm')


def intrinsics(cfg: Any, height: int, width: int) -> np.ndarray:
  """(fx, fy, cx, cy) of the frames from `config.predict` (module docstring).

  Raises:
    errors.ConfigError: `intrinsics` is not four numbers with fx, fy > 0, or
      `fov_deg` is not in (0, 180).
  """
  text = str(cfg.intrinsics).strip()
  if text:
    try:
      vals = [float(v) for v in text.replace(',', ' ').split()]
    except ValueError:
      vals = []
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals) or min(vals[:2]) <= 0:
      raise errors.ConfigError(f'config.predict.intrinsics={text!r} is invalid: expected '
                               "'fx fy cx cy' in frame pixels with fx, fy > 0")
    return np.array(vals, np.float32)
  fov = float(cfg.fov_deg)
  if not 0 < fov < 180:
    raise errors.ConfigError(f'config.predict.fov_deg={cfg.fov_deg!r} is invalid: expected '
                             'the field of view across the longer frame side in (0, 180) '
                             'degrees')
  f = max(height, width) / 2 / math.tan(math.radians(fov) / 2)
  return np.array([f, f, width / 2, height / 2], np.float32)


@functools.partial(jax.jit, static_argnames='reselect')
def _finish_fn(hyps, chosen, joints_2d, weights, camera, reselect: bool):
  """Chosen index, pose and camera-space root of a batch (jitted)."""
  weights = jnp.clip(weights, 0.0, None)
  if reselect:
    chosen, _ = matching.select(hyps, joints_2d, weights)
  pose = jnp.take_along_axis(hyps, chosen[:, None, None, None], axis=1)[:, 0]
  shift = matching.fit_root_translation(pose[:, None], joints_2d, weights, camera)[:, 0]
  return chosen, pose, pose[:, skeleton.ROOT] + shift


def finish(found: list[Found], camera: np.ndarray, reselect: bool) -> None:
  """Fills in the chosen pose (`reselect`: by matching) and the camera-space root.

  Args:
    found: people whose `hyps`, `joints_2d` and `confidence` are set; updated
      in place.
    camera: (fx, fy, cx, cy) frame pixels.
    reselect: choose the hypothesis by matching against `joints_2d` (2D from
      a keypoints file); else keep `chosen`.
  """
  if not found:
    return
  chosen, pose, root = jax.device_get(_finish_fn(
      np.stack([f.hyps for f in found]).astype(np.float32),
      np.array([f.chosen for f in found], np.int32),
      np.stack([f.joints_2d for f in found]).astype(np.float32),
      np.stack([f.confidence for f in found]).astype(np.float32), camera, reselect))
  for f, c, p, r in zip(found, chosen, pose, root):
    behind = not r[2] > 0  # a fit behind the camera is no position (NaN)
    f.chosen, f.pose = int(c), np.asarray(p)
    f.root_camera_mm = np.full(3, np.nan, np.float32) if behind else np.asarray(r)


def assemble(frames: list[list[Found]], num_hyps: int, fps: float) -> dict[int, PersonTrack]:
  """One `PersonTrack` per id (by increasing id) from the people of every frame."""
  t = len(frames)
  nan = lambda *s: np.full((t,) + s, np.nan, np.float32)  # pylint: disable=unnecessary-lambda-assignment
  out: dict[int, PersonTrack] = {}
  for i, frame in enumerate(frames):
    for f in frame:
      if f.id not in out:
        out[f.id] = PersonTrack(
            id=f.id, fps=fps, present=np.zeros(t, bool), boxes=nan(4), confidence=nan(K),
            hypotheses=nan(num_hyps, K, 3), chosen=np.full(t, -1, np.int32),
            joints_2d_raw=nan(K, 2), joints_3d_raw=nan(K, 3), root_camera_mm_raw=nan(3),
            joints_2d=nan(K, 2), joints_3d=nan(K, 3), root_camera_mm=nan(3))
      p = out[f.id]
      p.present[i], p.boxes[i], p.confidence[i], p.hypotheses[i] = True, f.box, f.confidence, f.hyps
      p.chosen[i], p.joints_2d_raw[i], p.joints_3d_raw[i] = f.chosen, f.joints_2d, f.pose
      p.root_camera_mm_raw[i] = f.root_camera_mm
      p.joints_2d[i], p.joints_3d[i], p.root_camera_mm[i] = f.joints_2d, f.pose, f.root_camera_mm
  return dict(sorted(out.items()))


def _person_size(points: np.ndarray) -> float:
  """Median over frames of a pose's larger extent (1.0 when there are none)."""
  extent = np.nanmax(points, axis=1) - np.nanmin(points, axis=1)
  sizes = np.max(extent, axis=-1)
  sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
  return float(np.median(sizes)) if sizes.size else 1.0


def smooth_people(people: dict[int, PersonTrack], cfg: Any) -> None:
  """Smooths each person's 2D joints, 3D pose and root over time (in place).

  The One-Euro speeds are measured in the person's size (2D: pixels, 3D and
  the root: millimetres), as `smoothing.smooth` expects.
  """
  for p in people.values():
    if not p.present.any():
      continue
    size_2d = _person_size(p.joints_2d_raw[p.present])
    size_3d = _person_size(p.joints_3d_raw[p.present])
    p.joints_2d = smoothing.smooth(p.joints_2d_raw, p.present, cfg, p.fps,
                                   scale=size_2d).astype(np.float32)
    p.joints_3d = smoothing.smooth(p.joints_3d_raw, p.present, cfg, p.fps,
                                   scale=size_3d).astype(np.float32)
    placed = p.present & np.all(np.isfinite(p.root_camera_mm_raw), axis=-1)
    p.root_camera_mm = smoothing.smooth(p.root_camera_mm_raw, placed, cfg, p.fps,
                                        scale=size_3d).astype(np.float32)


def record(person_id: int, box, joints_2d, confidence, pose_3d, root_camera_mm, hypothesis: int,
           hypotheses) -> dict[str, Any]:
  """One person's JSON entry (the `"people"` of a frame or an image)."""
  to_json = predictor.json_array
  return {'id': int(person_id), 'box': to_json(box), 'joints_2d': to_json(joints_2d),
          'confidence': to_json(confidence), 'pose_3d': to_json(pose_3d),
          'root_camera_mm': to_json(root_camera_mm), 'hypothesis': int(hypothesis),
          'hypotheses': to_json(hypotheses)}


def frame_people(people: dict[int, PersonTrack], i: int) -> list[dict[str, Any]]:
  """The `"people"` of frame `i`'s JSON entry (smoothed 2D, 3D and root; raw rest)."""
  return [record(p.id, p.boxes[i], p.joints_2d[i], p.confidence[i], p.joints_3d[i],
                 p.root_camera_mm[i], p.chosen[i], p.hypotheses[i])
          for p in people.values() if p.present[i]]


def save_npz(path: str, people: dict[int, PersonTrack], num_frames: int, num_hyps: int,
             **extra: Any) -> None:
  """Writes every person's arrays stacked on a leading person axis, with `ids`.

  Args:
    path: the `.npz` file.
    people: from `assemble` (and `smooth_people`).
    num_frames, num_hyps: T and H (the arrays' shapes when there is nobody).
    **extra: further arrays (e.g. `fps`, `frame_size`, `intrinsics`).
  """
  ids = np.array(list(people), np.int64)
  arrays = {}
  for name in ARRAY_FIELDS:
    rows = [getattr(p, name) for p in people.values()]
    arrays[name] = np.stack(rows) if rows else _empty_field(name, num_frames, num_hyps)[None][:0]
  np.savez_compressed(path, ids=ids, **arrays, **extra)


def _empty_field(name: str, t: int, h: int) -> np.ndarray:
  shapes = {'present': (t,), 'boxes': (t, 4), 'confidence': (t, K), 'hypotheses': (t, h, K, 3),
            'chosen': (t,), 'joints_2d_raw': (t, K, 2), 'joints_3d_raw': (t, K, 3),
            'root_camera_mm_raw': (t, 3), 'joints_2d': (t, K, 2), 'joints_3d': (t, K, 3),
            'root_camera_mm': (t, 3)}
  dtype = bool if name == 'present' else (np.int32 if name == 'chosen' else np.float32)
  return np.zeros(shapes[name], dtype)


def load_people(path: str) -> dict[int, PersonTrack]:
  """Every person of a `<name>_poses.npz`: poses over time, root trajectory, fps.

  Args:
    path: a `<name>_poses.npz` the video predictor wrote.

  Returns:
    {id: PersonTrack} by increasing id; each track's `fps` is the video's.
  """
  with np.load(path) as npz:
    fps = float(npz['fps'])
    return {int(person_id): PersonTrack(id=int(person_id), fps=fps,
                                        **{k: npz[k][n] for k in ARRAY_FIELDS})
            for n, person_id in enumerate(npz['ids'])}
