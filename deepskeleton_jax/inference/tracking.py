"""Boxes and identities of people across video frames (no network here).

- `box_from_joints`: the square person box around a pose's 2D joints that
  the tracker crops the next frame with (`box_margin` x their extent).
- `search_windows`: the whole frame and half-overlapping square windows, the
  candidates run when tracking starts or looks for more people.
- `suppress`: non-maximum suppression of one frame's person boxes.
- `IdTracker`: identities from frame to frame. Each frame's boxes are
  assigned to the tracks' last boxes by the Hungarian algorithm
  (`scipy.optimize.linear_sum_assignment`) on their IoU, a pair counting
  only when it overlaps by at least `MATCH_MIN_IOU`; a box left over starts
  a new track with a new id (while fewer than `max_people` tracks are seen in
  that frame), a track left over is lost, and a track lost for more than
  `max_lost_frames` frames ends (its id is never reused).
"""

from __future__ import annotations

import dataclasses

import chex
import numpy as np
from scipy import optimize

from deepskeleton_jax.geometry import skeleton

# Boxes of consecutive frames with less overlap are not the same person.
MATCH_MIN_IOU = 0.1
# Two boxes of one frame overlapping more are one person (the less confident goes).
SUPPRESS_IOU = 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two `x0 y0 x1 y1` boxes."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return float(inter / union) if union > 0 else 0.0


def box_from_joints(joints_2d: np.ndarray, margin: float, height: int, width: int,
                    weights: np.ndarray | None = None) -> np.ndarray:
  """The tracked box: a square of `margin` x the joints' larger extent, same centre.

  Args:
    joints_2d: [16, 2] frame pixels.
    margin: side / the joints' extent.
    height, width: the frame (the centre is kept inside it; the side is at
      least 1/16 of the frame's shorter side).
    weights: [16] joint scores; only joints with a positive score count (all
      when None or when none is positive).

  Returns:
    [4] float32 x0 y0 x1 y1.
  """
  chex.assert_shape(joints_2d, (skeleton.NUM_JOINTS, 2))
  if weights is not None and np.any(np.asarray(weights) > 0):
    joints_2d = joints_2d[np.asarray(weights) > 0]
  lo, hi = joints_2d.min(0), joints_2d.max(0)
  centre = np.clip((lo + hi) / 2, 0, [width, height])
  half = max(margin * float(np.max(hi - lo)), min(height, width) / 16) / 2
  return np.concatenate([centre - half, centre + half]).astype(np.float32)


def search_windows(height: int, width: int, scales) -> np.ndarray:
  """Candidate person boxes for a search: the whole frame, then square windows.

  Args:
    height, width: the frame.
    scales: window sides as fractions of the frame's shorter side; windows of
      each side overlap by half and cover the frame.

  Returns:
    [N, 4] float32 x0 y0 x1 y1, the whole frame first.
  """
  out = [[0.0, 0.0, float(width), float(height)]]
  for s in scales:
    side = float(s) * min(height, width)
    nx, ny = (int(np.ceil(max(d - side, 0.0) / (side / 2))) + 1 for d in (width, height))
    for cy in np.linspace(side / 2, height - side / 2, ny):
      for cx in np.linspace(side / 2, width - side / 2, nx):
        out.append([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
  return np.array(out, np.float32)


def suppress(boxes: list[np.ndarray], scores: list[float],
             max_iou: float = SUPPRESS_IOU) -> list[int]:
  """Indices of the boxes kept by non-maximum suppression, most confident first.

  Args:
    boxes: [4] boxes of one frame.
    scores: their confidences.
    max_iou: a box overlapping a kept, more confident one by more is dropped.

  Returns:
    The kept indices, by decreasing score (ties: the earlier box first).
  """
  kept: list[int] = []
  for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
    if all(iou(boxes[i], boxes[k]) <= max_iou for k in kept):
      kept.append(i)
  return kept


@dataclasses.dataclass
class _Identity:
  id: int
  box: np.ndarray  # the last box it was seen with
  lost: int = 0    # frames since then


class IdTracker:
  """Identities of people from frame to frame by box overlap (module docstring)."""

  def __init__(self, max_people: int | None, max_lost_frames: int,
               min_iou: float = MATCH_MIN_IOU):
    """A tracker without tracks.

    Args:
      max_people: at most this many people get an id in one frame (None: any).
      max_lost_frames: a track unseen for more frames than this ends.
      min_iou: a box and a track's last box overlapping less never match.
    """
    self.max_people, self.max_lost_frames, self.min_iou = max_people, max_lost_frames, min_iou
    self.tracks: list[_Identity] = []
    self.next_id = 0

  def update(self, boxes: list[np.ndarray], scores: list[float] | None = None
             ) -> list[int | None]:
    """Assigns one frame's boxes to tracks (call once per frame, in order).

    Args:
      boxes: the frame's [4] person boxes (none: every track is lost a frame).
      scores: their confidences. When `max_people` limits them, boxes that
        continue a track come first, then new ones by decreasing score (None:
        in the given order).

    Returns:
      Per box its id, or None for a box left without one (over `max_people`).
    """
    n = len(boxes)
    match: dict[int, int] = {}  # box -> track row
    if n and self.tracks:
      overlap = np.array([[iou(t.box, b) for b in boxes] for t in self.tracks])
      rows, cols = optimize.linear_sum_assignment(-overlap)
      match = {c: r for r, c in zip(rows, cols) if overlap[r, c] >= self.min_iou}
    # People already followed first, then by decreasing score.
    order = sorted(range(n), key=lambda i: (i not in match, 0 if scores is None else -scores[i], i))
    ids: list[int | None] = [None] * n
    seen: set[int] = set()
    for c in order:
      if self.max_people is not None and len(seen) >= self.max_people:
        break
      if c in match:
        track = self.tracks[match[c]]
        track.box, track.lost = boxes[c], -1
      else:
        track = _Identity(self.next_id, boxes[c], lost=-1)
        self.tracks.append(track)
        self.next_id += 1
      ids[c] = track.id
      seen.add(track.id)
    for track in self.tracks:
      track.lost += 1
    self.tracks = [t for t in self.tracks if t.lost <= self.max_lost_frames]
    return ids
