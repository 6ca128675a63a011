"""Tests of boxes and identities across frames (inference/tracking.py), no network."""

import itertools

import numpy as np
import pytest

from deepskeleton_jax.inference import tracking


def _box(cx, cy, side=40.0):
  return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def test_iou_by_hand():
  assert tracking.iou(_box(0, 0, 2), _box(1, 0, 2)) == pytest.approx(2 / 6)
  assert tracking.iou(_box(0, 0), _box(100, 0)) == 0.0


def test_box_from_joints_ignores_zero_score_joints():
  joints = np.tile([[50.0, 60.0]], (16, 1)) + np.linspace(-10, 10, 16)[:, None]
  joints[3] = [0.0, 0.0]  # a joint the tool did not find, written at the origin
  weights = np.ones(16)
  weights[3] = 0
  box = tracking.box_from_joints(joints, 1.0, 200, 200, weights=weights)
  np.testing.assert_allclose(box, [40, 50, 60, 70], atol=1e-5)  # 20 px square, same centre


def test_search_windows_cover_the_frame():
  windows = tracking.search_windows(192, 256, (1.0, 0.5))
  np.testing.assert_allclose(windows[0], [0, 0, 256, 192])
  sides = windows[1:, 2] - windows[1:, 0]
  np.testing.assert_allclose(windows[1:, 3] - windows[1:, 1], sides)  # squares
  assert sorted(set(np.round(sides, 3))) == [96.0, 192.0]
  assert windows.min() >= 0 and windows[:, 2].max() <= 256 and windows[:, 3].max() <= 192
  small = windows[1:][sides < 100]
  assert len(small) == 5 * 3  # stride 48 px: x at 48..208, y at 48..144
  # Every pixel centre of the frame is inside a window of each size.
  ys, xs = np.mgrid[0:192, 0:256] + 0.5
  for group in (windows[1:][sides > 100], small):
    inside = np.zeros_like(xs, bool)
    for x0, y0, x1, y1 in group:
      inside |= (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    assert inside.all()


def test_suppress_keeps_the_most_confident_of_overlapping_boxes():
  boxes = [_box(0, 0), _box(5, 0), _box(100, 0), _box(2, 1)]
  assert tracking.suppress(boxes, [0.5, 0.9, 0.1, 0.2]) == [1, 2]


def test_ids_follow_two_people_whatever_the_order():
  """Two people walking towards each other (not yet crossing); listed in both orders."""
  tracker = tracking.IdTracker(None, max_lost_frames=2)
  orders = itertools.cycle([(0, 1), (1, 0)])
  for t in range(20):
    people = [_box(30 + 3 * t, 50), _box(200 - 3 * t, 50)]
    order = next(orders)
    ids = tracker.update([people[k] for k in order])
    assert [ids[order.index(k)] for k in range(2)] == [0, 1], t


def test_lost_person_keeps_its_id_until_max_lost_frames():
  tracker = tracking.IdTracker(None, max_lost_frames=2)
  assert tracker.update([_box(50, 50)]) == [0]
  assert tracker.update([]) == [] and tracker.update([]) == []  # lost 2 frames: kept
  assert tracker.update([_box(52, 50)]) == [0]
  for _ in range(3):  # lost 3 frames: the track ends
    tracker.update([])
  assert tracker.update([_box(52, 50)]) == [1]  # a new id, never a reused one


def test_max_people_gives_ids_to_the_most_confident():
  tracker = tracking.IdTracker(1, max_lost_frames=5)
  assert tracker.update([_box(50, 50), _box(150, 50)], [0.2, 0.8]) == [None, 0]
  # The followed person keeps the only place even when less confident.
  assert tracker.update([_box(50, 50), _box(151, 50)], [0.9, 0.3]) == [None, 0]
