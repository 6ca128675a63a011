"""The video predictor's overlay: each frame with its 2D pose beside its 3D pose.

Drawn with OpenCV rather than matplotlib (a 3D matplotlib axes costs ~0.1 s
a frame; these lines cost ~1 ms): the left panel is the input frame at its
own size with the person box and the 2D skeleton; the right panel, a dark
square as tall as the frame, shows the chosen 3D pose (root-relative) from a
fixed novel viewpoint, the same (elevation, azimuth) convention and default
as `drawing.draw_skeleton_3d`, at a fixed scale so that the person does not
change size between frames. Bone colours are `skeleton.BONE_COLORS`.
"""

from __future__ import annotations

import chex
import cv2
import numpy as np

from deepskeleton_jax.visualization import drawing
from deepskeleton_jax.geometry import skeleton

_PANEL_BGR = (28, 28, 28)
_BOX_BGR = (60, 220, 255)
_TEXT_BGR = (235, 235, 235)
_BONES_BGR = [tuple(int(255 * c) for c in rgb[::-1]) for rgb in skeleton.BONE_COLORS]


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


def _lines(image: np.ndarray, joints: np.ndarray, thickness: int, scale: int = 16) -> None:
  """Draws the 15 bones (finite ends) with sub-pixel anti-aliased lines."""
  if not np.all(np.isfinite(joints)):
    return
  pts = np.round((joints - 0.5) * scale).astype(np.int64)  # continuous -> OpenCV centres
  for b, (i, j) in enumerate(skeleton.BONES):
    cv2.line(image, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[j]),
             (0, 0, 0), thickness + 2, cv2.LINE_AA, shift=4)
  for b, (i, j) in enumerate(skeleton.BONES):
    cv2.line(image, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[j]),
             _BONES_BGR[b], thickness, cv2.LINE_AA, shift=4)


def render(frame: np.ndarray, box: np.ndarray | None, joints_2d: np.ndarray | None,
           pose: np.ndarray | None, label: str,
           view: tuple[float, float] = drawing.DEFAULT_VIEW) -> np.ndarray:
  """One overlay frame: [H, W + H, 3] uint8 BGR (what `cv2.VideoWriter` takes).

  Args:
    frame: [H, W, 3] uint8 RGB.
    box: [4] x0 y0 x1 y1 frame pixels, or None.
    joints_2d: [16, 2] frame pixels, or None (no person).
    pose: [16, 3] mm (root-relative), or None.
    label: text written at the top left.
    view: (elevation, azimuth) of the 3D panel.

  Returns:
    The frame.
  """
  chex.assert_rank(frame, 3)
  if joints_2d is not None:
    chex.assert_shape(joints_2d, (skeleton.NUM_JOINTS, 2))
  if pose is not None:
    chex.assert_shape(pose, (skeleton.NUM_JOINTS, 3))
  h, w = frame.shape[:2]
  left = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
  thickness = max(1, round(h / 120))
  if box is not None and np.all(np.isfinite(box)):
    p0, p1 = np.round(box[:2]).astype(int), np.round(box[2:]).astype(int)
    cv2.rectangle(left, tuple(int(v) for v in p0), tuple(int(v) for v in p1), _BOX_BGR,
                  max(1, thickness // 2))
  if joints_2d is not None:
    _lines(left, np.asarray(joints_2d, np.float64), thickness)
  right = np.empty((h, h, 3), np.uint8)
  right[:] = _PANEL_BGR
  if pose is not None and np.all(np.isfinite(pose)):
    _lines(right, project_view(np.asarray(pose, np.float64), h, view), thickness)
  else:
    cv2.putText(right, 'no person', (h // 4, h // 2), cv2.FONT_HERSHEY_SIMPLEX,
                h / 400, _TEXT_BGR, 1, cv2.LINE_AA)
  out = np.concatenate([left, right], axis=1)
  cv2.putText(out, label, (4, max(12, h // 18)), cv2.FONT_HERSHEY_SIMPLEX, max(0.35, h / 600),
              _TEXT_BGR, 1, cv2.LINE_AA)
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
