"""The video predictor's overlay: each frame with its 2D poses beside their 3D poses.

Drawn with OpenCV rather than matplotlib (a 3D matplotlib axes costs ~0.1 s
a frame; these lines cost ~1 ms): the left panel is the input frame at its
own size with every person's box, id and 2D skeleton; the right panel, a
dark square as tall as the frame, shows every person's chosen 3D pose
(root-relative) side by side, by increasing id, from a fixed novel
viewpoint, the same (elevation, azimuth) convention and default as
`drawing.draw_skeleton_3d`, at a fixed scale per number of people so that a
person does not change size between frames. Bone colours are
`skeleton.BONE_COLORS`; each id has its colour (`id_color`): its box, its
label and the outline of its bones, in both panels.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import cv2
import numpy as np

from deepskeleton_jax.visualization import drawing
from deepskeleton_jax.geometry import skeleton

_PANEL_BGR = (28, 28, 28)
_TEXT_BGR = (235, 235, 235)
_BONES_BGR = [tuple(int(255 * c) for c in rgb[::-1]) for rgb in skeleton.BONE_COLORS]
# Id colours (BGR), distinct from each other and from the dark panel.
_ID_BGR = ((60, 220, 255), (255, 160, 60), (120, 255, 120), (200, 120, 255),
           (80, 80, 255), (255, 255, 120), (160, 200, 255), (255, 120, 200))


def id_color(person_id: int) -> tuple[int, int, int]:
  """The BGR colour of a person id (8 colours, repeating)."""
  return _ID_BGR[int(person_id) % len(_ID_BGR)]


def view_axes(view: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
  """Screen right and up vectors, in plot coordinates (x, z, -y), of a view.

  Args:
    view: (elevation, azimuth) in degrees, as matplotlib's `view_init`:
      (0, -90) looks along the camera's own optical axis.

  Returns:
    (right [3], up [3]) unit vectors.
  """
  elev, azim = np.deg2rad(view[0]), np.deg2rad(view[1])
  right = np.array([-np.sin(azim), np.cos(azim), 0.0])
  up = np.array([-np.cos(azim) * np.sin(elev), -np.sin(azim) * np.sin(elev), np.cos(elev)])
  return right, up


def project_view(pose: np.ndarray, side: int, view: tuple[float, float],
                 height_mm: float = 2000.0) -> np.ndarray:
  """Screen pixels [16, 2] of a root-relative 3D pose seen from `view`.

  Args:
    pose: [16, 3] mm, camera frame (y down).
    side: panel side in pixels.
    view: (elevation, azimuth) in degrees.
    height_mm: the panel's height in mm at the root's depth.

  Returns:
    [16, 2] (x, y) panel pixels; the root (thorax) at (side / 2, 0.36 side).
  """
  right, up = view_axes(view)
  pts = drawing.camera_to_plot(pose - pose[skeleton.ROOT])
  scale = side / height_mm
  return np.stack([side / 2 + scale * (pts @ right), 0.36 * side - scale * (pts @ up)], -1)


def _lines(image: np.ndarray, joints: np.ndarray, thickness: int,
           outline: tuple[int, int, int] = (0, 0, 0), scale: int = 16) -> None:
  """Draws the 15 bones (finite ends) with sub-pixel anti-aliased lines."""
  if not np.all(np.isfinite(joints)):
    return
  pts = np.round((joints - 0.5) * scale).astype(np.int64)  # continuous -> OpenCV centres
  for b, (i, j) in enumerate(skeleton.BONES):
    cv2.line(image, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[j]),
             outline, thickness + 2, cv2.LINE_AA, shift=4)
  for b, (i, j) in enumerate(skeleton.BONES):
    cv2.line(image, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[j]),
             _BONES_BGR[b], thickness, cv2.LINE_AA, shift=4)


def _array(person: dict[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray | None:
  """`person[key]` as a finite float array of `shape`, or None."""
  value = person.get(key)
  if value is None:
    return None
  value = np.asarray(value, np.float64)
  chex.assert_shape(value, shape)
  return value if np.all(np.isfinite(value)) else None


def _text(image: np.ndarray, text: str, at: tuple[int, int], height: int,
          color: tuple[int, int, int] = _TEXT_BGR) -> None:
  cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, max(0.35, height / 600), color, 1,
              cv2.LINE_AA)


def render(frame: np.ndarray, people: Sequence[dict[str, Any]], label: str,
           view: tuple[float, float] = drawing.DEFAULT_VIEW) -> np.ndarray:
  """One overlay frame: [H, W + H, 3] uint8 BGR (what `cv2.VideoWriter` takes).

  Args:
    frame: [H, W, 3] uint8 RGB.
    people: the frame's people as in the predictor's JSON: each a dict with
      `id`, `box` [4] (x0 y0 x1 y1 frame pixels), `joints_2d` [16, 2] and
      `pose_3d` [16, 3] (mm, root-relative), any of them None.
    label: text written at the top left.
    view: (elevation, azimuth) of the 3D panel.

  Returns:
    The frame.
  """
  chex.assert_rank(frame, 3)
  h, w = frame.shape[:2]
  left = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
  thickness = max(1, round(h / 120))
  right = np.empty((h, h, 3), np.uint8)
  right[:] = _PANEL_BGR
  poses = [(p, _array(p, 'pose_3d', (skeleton.NUM_JOINTS, 3))) for p in people]
  poses = sorted([(p, q) for p, q in poses if q is not None], key=lambda pq: pq[0]['id'])
  for person in people:
    color = id_color(person['id'])
    box = _array(person, 'box', (4,))
    if box is not None:
      p0, p1 = np.round(box[:2]).astype(int), np.round(box[2:]).astype(int)
      cv2.rectangle(left, tuple(int(v) for v in p0), tuple(int(v) for v in p1), color,
                    max(1, thickness // 2))
      _text(left, f"id {person['id']}", (int(p0[0]) + 2, int(p1[1]) - 4), h, color)
    joints = _array(person, 'joints_2d', (skeleton.NUM_JOINTS, 2))
    if joints is not None:
      _lines(left, joints, thickness, outline=color)
  n = len(poses)
  for k, (person, pose) in enumerate(poses):
    column = project_view(pose, h, view, height_mm=2000.0 * max(1.0, n / 1.5))
    column[:, 0] += (k + 0.5) * h / n - h / 2
    _lines(right, column, thickness, outline=id_color(person['id']))
    _text(right, f"id {person['id']}", (int((k + 0.1) * h / n), h - 8), h,
          id_color(person['id']))
  if not poses:
    cv2.putText(right, 'no person', (h // 4, h // 2), cv2.FONT_HERSHEY_SIMPLEX,
                h / 400, _TEXT_BGR, 1, cv2.LINE_AA)
  out = np.concatenate([left, right], axis=1)
  _text(out, label, (4, max(12, h // 18)), h)
  return out


class Writer:
  """An overlay video file: `write` frames from `render`, then `close`."""

  def __init__(self, path: str, fps: float, height: int, width: int):
    """Opens `path` (mp4v) for frames of [height, width + height]."""
    self.size = (width + height, height)
    self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, self.size)
    if not self._writer.isOpened():
      raise OSError(f'OpenCV cannot write the video {path}')

  def write(self, image: np.ndarray) -> None:
    """Appends one `render` frame ([H, W + H, 3] uint8 BGR)."""
    if (image.shape[1], image.shape[0]) != self.size:
      raise ValueError(f'overlay frames must be {self.size}, got {image.shape}')
    self._writer.write(image)

  def close(self) -> None:
    """Finishes the file."""
    self._writer.release()
