"""People given by files: boxes files and 2D keypoint files from other tools.

`config.predict.boxes_file` (video frames count from 0; for images the key is
the image's file name):
- CSV or any text, one row per person and frame: `frame id x0 y0 x1 y1`
  (images: `a.jpg id x0 y0 x1 y1`), commas or spaces, optional header line,
  `#` comments;
- JSON: `[{"frame": 0, "id": 3, "box": [x0, y0, x1, y1]}, ...]` (images:
  `"image": "a.jpg"`), or the video predictor's own `<name>.json`;
- the one-person file of before (videos only): one `x0 y0 x1 y1` row (or
  `none`) per frame, CSV, or a JSON list of boxes / null, or
  `{"boxes": [...]}`: id 0.

`config.predict.keypoints_file`: a JSON list of top-down results, one entry
per person and frame: `"frame"` or `"image_id"` (an integer frame, from 0;
images: `"image"`, or an `"image_id"` that is the file name), then either
`"keypoints"`: COCO-17 (x, y, score) flat as COCO writes them (51 numbers) or
nested [17, 3], in COCO's pixel indices (pixel centres at integers, so 0.5
is added to reach the project's continuous pixels, as detectron2 does), mapped
to our joints by `geometry/coco17.py`; or `"joints"`: our 16 joints [[x, y]]
in the project's continuous pixels (our own output's `joints_2d`), with
optional `"scores"` (16 numbers, default 1). `"track_id"` (optional) is kept
as the person's id; without it ids come from `tracking.IdTracker` over the
keypoints' boxes, frame after frame (for images: 0, 1, ... in the file's
order); every entry must have one or none.
`"bbox"`, `"score"` and other fields are read by the tools that wrote them
and not used: the crop is the square `box_margin` x the keypoints' extent
(joints with a positive score).

Every problem is one `errors.InputError` naming the file, the entry or line
and what was expected, raised before any network runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax.geometry import coco17
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import tracking
from deepskeleton_jax.inference import video_io

K = skeleton.NUM_JOINTS
_NONE_WORDS = ('none', 'null', 'nan', '-')


@dataclasses.dataclass
class GivenPerson:
  """One person of one frame (or image) as a file gives it."""
  id: int
  box: np.ndarray                        # [4] x0 y0 x1 y1 frame pixels
  joints_2d: np.ndarray | None = None    # [16, 2] (keypoints files)
  scores: np.ndarray | None = None       # [16]


class Index:
  """Where an entry goes: a frame of a video, or one image of a list."""

  def __init__(self, sizes: Sequence[tuple[int, int]], images: Sequence[str] | None = None):
    """Args: sizes: (height, width) per frame or image; images: their paths (None: a video)."""
    self.sizes, self.images = list(sizes), images

  def __len__(self) -> int:
    return len(self.sizes)

  def check_box(self, i: int, box: np.ndarray, where: str) -> None:
    """Raises an `InputError` unless `box` is a person box of frame/image `i`."""
    problem = video_io.check_box(box, *self.sizes[i])
    if problem:
      raise errors.InputError(f'{where}: box {box.tolist()}: {problem}')

  def frame(self, value: Any, where: str) -> int:
    """The index of a frame number (a video) or an image's name (images)."""
    if self.images is None:
      if isinstance(value, str) and value.strip().lstrip('-').isdigit():
        value = int(value)
      if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(self):
        raise errors.InputError(f'{where}: frame {value!r}: expected an integer frame from 0 '
                                f'to {len(self) - 1} (frames count from 0)')
      return value
    if isinstance(value, str):
      hits = [i for i, p in enumerate(self.images)
              if value in (p, os.path.basename(p))]
      if len(hits) == 1:
        return hits[0]
    names = ', '.join(os.path.basename(p) for p in self.images)
    raise errors.InputError(f'{where}: image {value!r}: expected the file name of exactly one '
                            f'of the images ({names})')


def _read(path: str, what: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise errors.InputError(f'{path}: cannot read the {what} ({e})') from None


def _load_json(path: str, text: str, expected: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise errors.InputError(f'{path}: not valid JSON ({e}); expected {expected}') from None


def _flat(values: Any) -> list:
  """Nested lists flattened (anything else as one value)."""
  if isinstance(values, (list, tuple)):
    return [v for x in values for v in _flat(x)]
  return [values]


def _numbers(values: Any, n: int, where: str, expected: str) -> np.ndarray:
  try:
    row = np.array([float(v) for v in _flat(values)], np.float32)
  except (TypeError, ValueError):
    row = np.zeros(0)
  if row.shape != (n,):
    raise errors.InputError(f'{where}: {values!r}: expected {expected}')
  return row


def _box(values: Any, where: str, expected: str) -> np.ndarray:
  """A box: 4 numbers, never a nested list (that is not silently flattened)."""
  if isinstance(values, (list, tuple)) and any(isinstance(v, (list, tuple, dict)) for v in values):
    raise errors.InputError(f'{where}: {values!r}: expected {expected}')
  return _numbers(values, 4, where, expected)


def _person_id(value: Any, where: str) -> int:
  if isinstance(value, str) and value.strip().lstrip('-').isdigit():
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, int):
    raise errors.InputError(f'{where}: id {value!r}: expected an integer person id')
  return value


def _add(people: list[list[GivenPerson]], i: int, person: GivenPerson, where: str) -> None:
  if any(p.id == person.id for p in people[i]):
    raise errors.InputError(f'{where}: person id {person.id} twice in one frame; expected '
                            'each id at most once per frame')
  people[i].append(person)


def _csv_rows(text: str) -> list[tuple[int, list[str]]]:
  """(line number, values) of the non-empty lines; a header line is dropped."""
  rows = []
  for number, line in enumerate(text.splitlines(), start=1):
    line = line.split('#')[0].strip()
    if line:
      rows.append((number, line.replace(',', ' ').replace(';', ' ').split()))

  def number(v):
    try:
      float(v)
      return True
    except ValueError:
      return v.lower() in _NONE_WORDS
  if rows and not any(number(v) for v in rows[0][1]):
    rows = rows[1:]
  return rows


def _one_per_frame(path: str, rows: list, index: Index, what: str) -> list[list[GivenPerson]]:
  """The one-person file of before: one box (or none) per frame, id 0."""
  if index.images is not None:
    raise errors.InputError(f'{path}: one box per row without an image name; for images '
                            "expected rows 'a.jpg id x0 y0 x1 y1' or JSON entries "
                            '{"image": "a.jpg", "id": 0, "box": [x0, y0, x1, y1]}')
  if len(rows) != len(index):
    raise errors.InputError(
        f'{path}: {len(rows)} boxes for the {len(index)} frames of the video; expected one '
        "row 'x0 y0 x1 y1' (or 'none') per frame, or rows 'frame id x0 y0 x1 y1'")
  people: list[list[GivenPerson]] = [[] for _ in range(len(index))]
  for i, (n, values) in enumerate(rows):
    where = f'{path}: {what} {n}'
    if values is None or (len(values) in (0, 1) and (
        not values or str(values[0]).strip().lower() in _NONE_WORDS)):
      continue
    box = _box(values, where, "'x0 y0 x1 y1' (4 numbers in frame pixels) or 'none'")
    index.check_box(i, box, where)
    people[i].append(GivenPerson(0, box))
  return people


def _box_entries(path: str, entries: list, index: Index) -> list[list[GivenPerson]]:
  """JSON entries {"frame" | "image", "id", "box"}."""
  key = 'frame' if index.images is None else 'image'
  people: list[list[GivenPerson]] = [[] for _ in range(len(index))]
  for n, e in enumerate(entries):
    where = f'{path}: entry {n}'
    if not isinstance(e, dict) or key not in e or 'id' not in e or 'box' not in e:
      raise errors.InputError(f'{where}: {str(e)[:80]}: expected {{"{key}": ..., "id": ..., '
                              '"box": [x0, y0, x1, y1]}')
    i = index.frame(e[key], where)
    box = _box(e['box'], where, '[x0, y0, x1, y1] in frame pixels')
    index.check_box(i, box, where)
    _add(people, i, GivenPerson(_person_id(e['id'], where), box), where)
  return people


def read_boxes_file(path: str, index: Index) -> list[list[GivenPerson]]:
  """Reads a boxes file in any of the formats of the module docstring.

  Args:
    path: the file.
    index: the frames (or images) it refers to.

  Returns:
    Per frame (or image) its people, in the file's order.

  Raises:
    errors.InputError: unreadable file, bad rows or entries, a box outside.
  """
  text = _read(path, 'boxes file')
  if path.lower().endswith('.json') or text.lstrip()[:1] in ('[', '{'):
    data = _load_json(path, text, 'a JSON list of {"frame", "id", "box"} entries')
    if isinstance(data, dict) and isinstance(data.get('frames'), list) and any(
        isinstance(f, dict) and 'people' in f for f in data['frames']):
      data = [dict(p, frame=f.get('frame', n)) for n, f in enumerate(data['frames'])
              for p in (f.get('people') or [])]  # the video predictor's own output
      return _box_entries(path, data, index)
    if isinstance(data, list) and any(isinstance(e, dict) for e in data):
      return _box_entries(path, data, index)
    if isinstance(data, dict) and 'boxes' in data:
      data = data['boxes']
    elif isinstance(data, dict) and 'frames' in data:  # the predictor's output of before
      data = [f.get('box') if isinstance(f, dict) else f for f in data['frames']]
    if not isinstance(data, list):
      raise errors.InputError(f'{path}: expected a JSON list of {{"frame", "id", "box"}} '
                              'entries, or of [x0, y0, x1, y1] rows (or null), one per frame')
    rows = [(n + 1, [] if r is None else (r if isinstance(r, list) else [r]))
            for n, r in enumerate(data)]
    return _one_per_frame(path, rows, index, 'entry')
  rows = _csv_rows(text)
  widths = {len(v) for _, v in rows}
  if widths <= {1, 4}:
    return _one_per_frame(path, rows, index, 'line')
  people: list[list[GivenPerson]] = [[] for _ in range(len(index))]
  for n, values in rows:
    where = f'{path}: line {n}'
    if len(values) != 6:
      raise errors.InputError(f'{where}: {" ".join(values)!r}: expected 6 values '
                              f"'{'frame' if index.images is None else 'image'} id x0 y0 x1 y1'")
    i = index.frame(values[0], where)
    box = _box(values[2:], where, 'x0 y0 x1 y1 in frame pixels')
    index.check_box(i, box, where)
    _add(people, i, GivenPerson(_person_id(values[1], where), box), where)
  return people


def _entry_joints(e: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Our 16 joints and their scores from one keypoints entry."""
  if 'keypoints' in e:
    kp = _numbers(e['keypoints'], 51, where,
                  'COCO-17 "keypoints": 51 numbers (x, y, score per joint) or [17, 3]')
    kp = kp.reshape(17, 3) + np.array([0.5, 0.5, 0.0], np.float32)  # pixel indices -> ours
    return coco17.to_skeleton(kp)
  if 'joints' in e:
    joints = _numbers(e['joints'], 2 * K, where,
                      f'"joints": {K} [x, y] pairs in our joint order').reshape(K, 2)
    scores = (np.ones(K, np.float32) if e.get('scores') is None else
              _numbers(e['scores'], K, where, f'"scores": {K} numbers'))
    return joints, scores
  raise errors.InputError(f'{where}: expected "keypoints" (COCO-17) or "joints" (16 joints)')


def read_keypoints_file(path: str, index: Index, margin: float,
                        max_lost_frames: int) -> list[list[GivenPerson]]:
  """Reads 2D keypoints of people (module docstring) with their boxes and ids.

  Args:
    path: the JSON file.
    index: the frames (or images) it refers to.
    margin: box side / the keypoints' extent (`config.predict.box_margin`).
    max_lost_frames: for entries without `track_id`, `IdTracker`'s.

  Returns:
    Per frame (or image) its people, with `joints_2d` and `scores`.

  Raises:
    errors.InputError: unreadable file or a bad entry.
  """
  data = _load_json(path, _read(path, 'keypoints file'),
                    'a JSON list of {"frame", "keypoints" or "joints"} entries')
  if not isinstance(data, list):
    raise errors.InputError(f'{path}: expected a JSON list of {{"frame" or "image_id", '
                            '"keypoints" or "joints", ...}} entries, one per person and frame')
  keys = ('frame', 'image_id') if index.images is None else ('image', 'image_id')
  people: list[list[GivenPerson]] = [[] for _ in range(len(index))]
  with_ids = set()
  for n, e in enumerate(data):
    where = f'{path}: entry {n}'
    key = next((k for k in keys if isinstance(e, dict) and k in e), None)
    if key is None:
      raise errors.InputError(f'{where}: {str(e)[:80]}: expected a "{keys[0]}" or '
                              f'"{keys[1]}" key')
    i = index.frame(e[key], where)
    joints, scores = _entry_joints(e, where)
    if not np.all(np.isfinite(joints)) or not np.all(np.isfinite(scores)):
      raise errors.InputError(f'{where}: expected finite coordinates and scores')
    h, w = index.sizes[i]
    box = tracking.box_from_joints(joints, margin, h, w, weights=scores)
    with_ids.add('track_id' in e)
    if 'track_id' in e:
      _add(people, i, GivenPerson(_person_id(e['track_id'], where), box, joints, scores), where)
    else:
      people[i].append(GivenPerson(-1, box, joints, scores))
  if len(with_ids) > 1:
    raise errors.InputError(f'{path}: some entries have a "track_id" and some do not; '
                            'expected it on every entry or on none')
  if with_ids == {False}:  # images: ids in file order; a video: tracked
    tracker = tracking.IdTracker(None, max_lost_frames)
    for frame in people:
      ids = (list(range(len(frame))) if index.images is not None else
             tracker.update([p.box for p in frame], [float(np.mean(p.scores)) for p in frame]))
      for p, person_id in zip(frame, ids):
        p.id = person_id
  return people
