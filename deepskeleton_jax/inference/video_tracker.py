"""Running the pipeline on person crops of video frames, and following people.

`Runner` crops frames around boxes and runs the predictor on any number of
crops in padded batches of one size. `Tracker` follows up to
`config.predict.max_people` people through a video with speculative
batches (the module docstring of `predict_video.py` says how); identities
come from `tracking.IdTracker`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from deepskeleton_jax.inference import people as people_lib
from deepskeleton_jax.inference import people_io
from deepskeleton_jax.inference import predictor as predict_lib
from deepskeleton_jax.inference import tracking


class Runner:
  """Runs the predictor on crops, `batch_size` at a time (the last batch padded)."""

  def __init__(self, predictor: predict_lib.Predictor, batch_size: int):
    self.predictor, self.batch_size = predictor, batch_size
    self.crops_run = 0  # crops through the network, padding included

  def crop(self, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(crops [C, S, S, 3] at every crop scale, their crop-to-frame affines [C, 2, 3])."""
    batch = predict_lib.make_batch([frame], [box], self.predictor.crop_scales,
                                   self.predictor.lay.input_size)
    return batch['image'][0], batch['input_to_image'][0]

  def run(self, crops: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """The predictor's outputs (frame pixels) for every crop, in order."""
    outs = []
    for start in range(0, len(crops), self.batch_size):
      chunk = crops[start:start + self.batch_size]
      chunk = chunk + chunk[-1:] * (self.batch_size - len(chunk))
      out = self.predictor({'image': np.stack([c[0] for c in chunk]),
                            'input_to_image': np.stack([c[1] for c in chunk])})
      self.crops_run += self.batch_size
      outs.append(out)
    return {k: np.concatenate([o[k] for o in outs])[:len(crops)] for k in outs[0]}


def found_from(out: dict[str, np.ndarray], k: int, person_id: int, box: np.ndarray, cfg: Any,
               given: people_io.GivenPerson | None = None) -> people_lib.Found | None:
  """Crop `k`'s person, or None when its mean confidence is below `min_confidence`.

  With `given` 2D joints (a keypoints file) those and their scores are the
  person's 2D and confidences, and the person is always there.
  """
  if given is not None and given.joints_2d is not None:
    joints, conf = given.joints_2d, given.scores
  else:
    joints, conf = out['joints_2d'][k], out['confidence'][k]
    if not (float(np.mean(conf)) >= cfg.min_confidence and np.all(np.isfinite(joints))):
      return None
  return people_lib.Found(id=person_id, box=np.asarray(box, np.float32), joints_2d=joints,
                          confidence=conf, hyps=out['hyps'][k], chosen=int(out['chosen'][k]),
                          pose=out['pose'][k])


@dataclasses.dataclass
class _Crop:
  """A box run on every frame of a batch."""
  box: np.ndarray
  trusted: bool = True  # False: the whole-frame fallback (its 2D gives no box)


class Tracker:
  """Follows up to `max_people` people, one speculative batch at a time."""

  def __init__(self, run: Runner, cfg: Any, height: int, width: int,
               first_box: np.ndarray | None):
    """Args: run: the runner; cfg: `config.predict`; height, width: the frame;
    first_box: the first frame's box (`config.predict.boxes`), or None."""
    self.run, self.cfg, self.height, self.width = run, cfg, height, width
    self.windows = tracking.search_windows(height, width, cfg.search_scales)
    self.whole = self.windows[0]
    # Where a person lost by a crop would be looked for next: the whole frame
    # without search windows, else a search (None: cut the batch).
    self.restart = self.whole if len(self.windows) == 1 else None
    self.ids = tracking.IdTracker(int(cfg.max_people), int(cfg.max_lost_frames))
    self.boxes: dict[int, np.ndarray] = {}  # the next box of each person followed
    self.first_box = first_box

  def _search(self, frame: np.ndarray, taken: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Up to `n` boxes of confident windows' 2D joints overlapping no `taken` box."""
    if len(self.windows) == 1:
      boxes = [self.whole]
    else:
      out = self.run.run([self.run.crop(frame, w) for w in self.windows])
      conf = out['confidence'].mean(axis=1)
      good = [k for k in range(len(conf)) if conf[k] >= self.cfg.min_confidence
              and np.all(np.isfinite(out['joints_2d'][k]))]
      boxes = [tracking.box_from_joints(out['joints_2d'][k], self.cfg.box_margin,
                                        self.height, self.width) for k in good]
      boxes = [boxes[i] for i in tracking.suppress(boxes, [float(conf[k]) for k in good])]
    return [b for b in boxes if all(tracking.iou(b, t) <= tracking.SUPPRESS_IOU
                                    for t in taken)][:n]

  def _crops(self, frame: np.ndarray) -> list[_Crop]:
    crops = [_Crop(b) for b in self.boxes.values()]
    if self.first_box is not None:
      crops, self.first_box = [_Crop(self.first_box)], None
    missing = int(self.cfg.max_people) - len(crops)
    if missing > 0:
      crops += [_Crop(b) for b in self._search(frame, [c.box for c in crops], missing)]
    return crops or [_Crop(self.whole, trusted=False)]

  def _frame(self, out: dict[str, np.ndarray], rows: range, crops: list[_Crop]
             ) -> tuple[list[people_lib.Found], list[tuple[int | None, np.ndarray | None]]]:
    """One frame's people from its crops' outputs, and per crop (id, next box).

    A crop whose person is not there (or is another crop's, or over
    `max_people`) has id None and next box `restart`.
    """
    found = [found_from(out, k, -1, c.box, self.cfg) for k, c in zip(rows, crops)]
    hits = [j for j, f in enumerate(found) if f is not None]
    boxes = {j: tracking.box_from_joints(found[j].joints_2d, self.cfg.box_margin,
                                         self.height, self.width) for j in hits}
    conf = {j: float(np.mean(found[j].confidence)) for j in hits}
    kept = [hits[i] for i in tracking.suppress([boxes[j] for j in hits],
                                               [conf[j] for j in hits])]
    ids = self.ids.update([boxes[j] for j in kept], [conf[j] for j in kept])
    people, per_crop = [], [(None, self.restart)] * len(crops)
    for j, person_id in zip(kept, ids):
      if person_id is not None:
        found[j].id = person_id
        people.append(found[j])
        per_crop[j] = (person_id, boxes[j])
    return sorted(people, key=lambda f: f.id), per_crop

  def batch(self, frames: list[np.ndarray]) -> list[list[people_lib.Found]]:
    """Runs one speculative batch from `frames[0]`; returns the people of the kept frames.

    At least the first frame is kept; the tracker's state is then that after
    the last kept frame.
    """
    crops = self._crops(frames[0])
    out = self.run.run([self.run.crop(f, c.box) for f in frames for c in crops])
    kept: list[list[people_lib.Found]] = []
    for t in range(len(frames)):
      people, per_crop = self._frame(out, range(t * len(crops), (t + 1) * len(crops)), crops)
      kept.append(people)
      self.boxes = {i: b for (i, b), c in zip(per_crop, crops) if c.trusted and i is not None}
      if not all(b is not None and tracking.iou(b, c.box) >= self.cfg.track_min_iou
                 for (_, b), c in zip(per_crop, crops) if c.trusted):
        break  # Rerun from the next frame with its proper boxes (or a search).
    return kept
