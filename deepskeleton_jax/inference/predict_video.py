"""3D poses for every frame of a user's video, smoothed over time, with an overlay video.

  python run.py --mode=predict --config=configs/demo.py --workdir=workdir/demo \
      --config.predict.video=clip.mp4 [--config.predict.boxes='x0 y0 x1 y1']

Input: a video file OpenCV reads or a folder of frames (sorted by name; its
frame rate is `config.predict.fps`, default 25). A person box per frame comes
from `config.predict.boxes_file` (one row per frame, CSV or JSON; `none` rows:
no person), else from tracking: each box is the square around the previous
frame's 2D joints, `box_margin` times their extent. Tracking starts from
`config.predict.boxes` or, without it, from a search of the first frame: the
whole frame and half-overlapping square windows (`search_scales`) are run
and the most confident one's 2D joints give the box (a pose network trained
on person-filled crops makes loose 2D on a whole frame whose person fills
half of it, and a box tracked from loose 2D stays loose; `search_scales=()`
starts from the whole frame itself). The search is no person detector: the
demo's hourglass is confident on clutter too, and on 6 synthetic clips the
search found the person on 3, the whole frame on none, a given first box on
all 6. Give `boxes` (or a detector's `boxes_file`) when you can. A frame whose mean detection confidence
is below `min_confidence` has no person (NaN/null in the outputs, nothing
invented) and tracking restarts with a search (with the whole frame when
that finds nobody, until the next batch).

Batching: frames go through one jitted `pipeline.make_pipeline_fn` (maps
of every hypothesis, regressors, hourglass, matching), always padded to
`batch_size` frames (one compiled shape). With given boxes every batch is
full. With tracking a frame's box depends on the previous frame, so batches
are speculative: the frames of a batch share the box of its first frame,
and, walking the results in order, frame t is kept while the box tracked from
frame t - 1 overlaps the shared box by at least `track_min_iou`; at the first
frame where it does not, the batch is cut and the rest is rerun from there
with its proper box. Every kept frame's box is thus within that IoU of what
frame-by-frame tracking would give; a slow or still person costs one batch
per `batch_size` frames, a fast one up to one batch per frame
(`track_min_iou=1.0` forces frame-by-frame tracking).

Then the 2D joints (frame pixels) and the chosen 3D pose are smoothed over
time (`smoothing.py`), and `WORKDIR/predict/` (or `predict.output_dir`)
gets `<name>_poses.npz`, `<name>.json` and `<name>_overlay.mp4` (frame with
the 2D overlay beside the 3D pose, at the input's frame rate), all three
renamed into place only when all are complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Iterator

from absl import logging
import chex
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.inference import predictor as predict_lib
from deepskeleton_jax.inference import smoothing
from deepskeleton_jax.inference import video_io
from deepskeleton_jax.visualization import video_overlay
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.experiment import metric_writer

K = skeleton.NUM_JOINTS


@dataclasses.dataclass
class Track:
  """Per-frame results of a video (T frames, H hypotheses); NaN where no person."""
  boxes: np.ndarray        # [T, 4] the box each frame was cropped around
  person: np.ndarray       # [T] bool
  joints_2d: np.ndarray    # [T, 16, 2] frame pixels
  confidence: np.ndarray   # [T, 16] detection confidences (kept for every frame)
  hyps: np.ndarray         # [T, H, 16, 3] mm
  chosen: np.ndarray       # [T] int32, -1 where no person
  pose: np.ndarray         # [T, 16, 3] mm, the chosen hypothesis
  frames_run: int = 0      # frames that went through the network (reruns, padding)
  frames_per_s: float = float('nan')  # after the first (compiling) batch

  @classmethod
  def empty(cls, num_frames: int, num_hyps: int) -> 'Track':
    """A track of `num_frames` frames without a person (NaN, chosen -1)."""
    nan = lambda *s: np.full((num_frames,) + s, np.nan, np.float32)  # pylint: disable=unnecessary-lambda-assignment
    return cls(boxes=nan(4), person=np.zeros(num_frames, bool), joints_2d=nan(K, 2),
               confidence=nan(K), hyps=nan(num_hyps, K, 3),
               chosen=np.full(num_frames, -1, np.int32), pose=nan(K, 3))


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two `x0 y0 x1 y1` boxes."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return float(inter / union) if union > 0 else 0.0


def box_from_joints(joints_2d: np.ndarray, margin: float, height: int,
                    width: int) -> np.ndarray:
  """The tracked box: a square of `margin` x the joints' larger extent, same centre.

  Args:
    joints_2d: [16, 2] frame pixels.
    margin: side / the joints' extent.
    height, width: the frame (the centre is kept inside it; the side is at
      least 1/16 of the frame's shorter side).

  Returns:
    [4] float32 x0 y0 x1 y1.
  """
  chex.assert_shape(joints_2d, (K, 2))
  lo, hi = joints_2d.min(0), joints_2d.max(0)
  centre = np.clip((lo + hi) / 2, 0, [width, height])
  half = max(margin * float(np.max(hi - lo)), min(height, width) / 16) / 2
  return np.concatenate([centre - half, centre + half]).astype(np.float32)


class _Progress:
  """Logs frames done, frames/s and the ETA every few seconds.

  The rate is measured from the end of the first batch, so that the one-off
  compilation does not distort the ETA.
  """

  def __init__(self, name: str, total: int, every_s: float = 5.0):
    self.name, self.total, self.every_s = name, total, every_s
    self.start = self.last = time.monotonic()
    self.first: tuple[float, int] | None = None

  def update(self, done: int, force: bool = False) -> None:
    """Records `done` frames; logs when `every_s` passed (or `force`)."""
    now = time.monotonic()
    if self.first is None:
      self.first = self.last_done = (now, done)
      logging.info('video %s: first batch done in %.1f s (compilation included)', self.name,
                   now - self.start)
      if not force:
        self.last = now
        return
    self.last_done = (now, done)
    if not force and now - self.last < self.every_s:
      return
    self.last = now
    rate = self.rate()
    eta = metric_writer.format_eta((self.total - done) / rate) if rate > 0 else '?'
    logging.info('video %s: %d/%d frames, %.1f frames/s, ETA %s', self.name, done,
                 self.total, rate, eta)

  def rate(self) -> float:
    """Frames per second after the first batch (over the whole run if that is all)."""
    (t0, d0), (t1, d1) = self.first, self.last_done
    if d1 <= d0:
      t0, d0 = self.start, 0
    return (d1 - d0) / max(t1 - t0, 1e-9)


class _Runner:
  """Runs the predictor on up to `batch_size` frames, padded to `batch_size`."""

  def __init__(self, predictor: predict_lib.Predictor, batch_size: int):
    self.predictor, self.batch_size = predictor, batch_size

  def __call__(self, frames: list[np.ndarray], boxes: list[np.ndarray]) -> dict[str, np.ndarray]:
    n = len(frames)
    pad = self.batch_size - n
    batch = predict_lib.make_batch(frames + frames[-1:] * pad, boxes + boxes[-1:] * pad,
                                   self.predictor.crop_scales, self.predictor.lay.input_size)
    out = self.predictor(batch)
    return {k: v[:n] for k, v in out.items()}


def _store(track: Track, i: int, out: dict[str, np.ndarray], k: int, box: np.ndarray,
           min_confidence: float) -> None:
  """Writes result `k` of a batch as frame `i`; low confidence: no person."""
  track.boxes[i], track.confidence[i] = box, out['confidence'][k]
  person = float(np.mean(out['confidence'][k])) >= min_confidence and np.all(
      np.isfinite(out['joints_2d'][k]))
  track.person[i] = person
  if person:
    track.joints_2d[i], track.hyps[i] = out['joints_2d'][k], out['hyps'][k]
    track.chosen[i], track.pose[i] = out['chosen'][k], out['pose'][k]


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


@dataclasses.dataclass
class _TrackState:
  """The tracker between batches: the next box (None: search) and its origin."""
  box: np.ndarray | None
  fallback: bool = False  # the box is the whole frame after a search found nobody


def _search(run: _Runner, frame: np.ndarray, windows: np.ndarray, cfg: Any, h: int, w: int,
            track: Track) -> _TrackState:
  """The most confident window's tracked box, or the whole frame (fallback)."""
  best, joints = -np.inf, None
  for start in range(0, len(windows), run.batch_size):
    chunk = list(windows[start:start + run.batch_size])
    out = run([frame] * len(chunk), chunk)
    track.frames_run += run.batch_size
    conf = out['confidence'].mean(axis=1)
    if conf.max() > best:
      best, joints = float(conf.max()), out['joints_2d'][int(np.argmax(conf))]
  if best >= cfg.min_confidence and np.all(np.isfinite(joints)):
    return _TrackState(box_from_joints(joints, cfg.box_margin, h, w))
  return _TrackState(np.array([0, 0, w, h], np.float32), fallback=True)


def _tracking_batch(run: _Runner, pending: list, state: _TrackState, track: Track, cfg: Any,
                    h: int, w: int, windows: np.ndarray) -> tuple[int, _TrackState]:
  """Runs one speculative tracking batch; returns (frames kept, next state)."""
  restart = None if len(windows) > 1 else np.array([0, 0, w, h], np.float32)
  if state.box is None:
    state = _search(run, pending[0][1], windows, cfg, h, w, track)
  shared = state.box
  out = run([f for _, f in pending], [shared] * len(pending))
  track.frames_run += run.batch_size
  kept, proper = 0, shared
  for k, (i, _) in enumerate(pending):
    if k > 0 and not ((proper is None and state.fallback) or
                      (proper is not None and iou(proper, shared) >= cfg.track_min_iou)):
      break  # Rerun from frame i with its proper box (or a search).
    _store(track, i, out, k, shared, cfg.min_confidence)
    trusted = track.person[i] and not state.fallback
    proper = box_from_joints(track.joints_2d[i], cfg.box_margin, h, w) if trusted else restart
    kept += 1
  return kept, _TrackState(proper)


def run_video(predictor: predict_lib.Predictor, source: video_io.FrameSource, cfg: Any,
              boxes: np.ndarray | None, first_box: np.ndarray | None) -> Track:
  """Predicts every frame (see the module docstring for the batching).

  Args:
    predictor: the loaded pipeline (`with_maps=False` is enough).
    source: the frames.
    cfg: `config.predict`.
    boxes: [T, 4] boxes from `boxes_file` (NaN rows: no person), or None to track.
    first_box: tracking's first box, or None to search the first frame.

  Returns:
    The `Track` of raw (unsmoothed) results.
  """
  n, (h, w), bsize = source.num_frames, (source.height, source.width), int(cfg.batch_size)
  windows = search_windows(h, w, cfg.search_scales)
  track = Track.empty(n, predictor.lay.num_hyps)
  run, progress = _Runner(predictor, bsize), _Progress(os.path.basename(source.path), n)
  frames: Iterator[np.ndarray] = source.frames()
  pending: list = []
  state = _TrackState(first_box if first_box is not None else
                      (None if len(windows) > 1 else windows[0]))
  read = done = 0
  while done < n:
    while len(pending) < bsize and read < n:
      pending.append((read, next(frames)))
      read += 1
    if boxes is not None:  # Given boxes: every frame with a box in one batch.
      todo = [(i, f) for i, f in pending if np.all(np.isfinite(boxes[i]))]
      if todo:
        out = run([f for _, f in todo], [boxes[i] for i, _ in todo])
        track.frames_run += bsize
        for k, (i, _) in enumerate(todo):
          _store(track, i, out, k, boxes[i], cfg.min_confidence)
      kept = len(pending)
    else:
      kept, state = _tracking_batch(run, pending, state, track, cfg, h, w, windows)
    pending = pending[kept:]
    done += kept
    progress.update(done, force=done == n)
  track.frames_per_s = progress.rate()
  logging.info('video %s: %d frames through the network for %d frames (batches of %d%s), '
               '%.1f frames/s after the first batch', source.path, track.frames_run, n, bsize,
               ', tracking' if boxes is None else ', given boxes', track.frames_per_s)
  return track


def _person_size(points: np.ndarray) -> float:
  """Median over frames of a pose's larger extent (1.0 when there are none)."""
  extent = np.nanmax(points, axis=1) - np.nanmin(points, axis=1)
  sizes = np.max(extent, axis=-1)
  sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
  return float(np.median(sizes)) if sizes.size else 1.0


def smooth_track(track: Track, cfg: Any, fps: float) -> tuple[np.ndarray, np.ndarray]:
  """Smoothed (joints_2d [T, 16, 2], pose [T, 16, 3]), NaN where no person."""
  if not track.person.any():
    return track.joints_2d.copy(), track.pose.copy()
  joints = smoothing.smooth(track.joints_2d, track.person, cfg, fps,
                            scale=_person_size(track.joints_2d[track.person]))
  pose = smoothing.smooth(track.pose, track.person, cfg, fps,
                          scale=_person_size(track.pose[track.person]))
  return joints.astype(np.float32), pose.astype(np.float32)


_nan_to_none = predict_lib.json_array


def frame_records(track: Track, joints_2d: np.ndarray, pose: np.ndarray,
                  fps: float) -> list[dict[str, Any]]:
  """The JSON entry of every frame (smoothed 2D and 3D; raw hypotheses)."""
  records = []
  for i in range(len(track.person)):
    person = bool(track.person[i])
    records.append({
        'frame': i, 'time_s': round(i / fps, 4), 'box': _nan_to_none(track.boxes[i]),
        'person': person,
        'detection_confidence': _nan_to_none(np.mean(track.confidence[i])),
        'joint_confidence': _nan_to_none(track.confidence[i]),
        'joints_2d': _nan_to_none(joints_2d[i]) if person else None,
        'joints_3d_mm': _nan_to_none(pose[i]) if person else None,
        'chosen_hypothesis': int(track.chosen[i]) if person else None,
        'hypotheses_mm': _nan_to_none(track.hyps[i]) if person else None,
    })
  return records


def _write_overlay(path: str, source: video_io.FrameSource, track: Track,
                   joints_2d: np.ndarray, pose: np.ndarray) -> None:
  writer = video_overlay.Writer(path, source.fps, source.height, source.width)
  try:
    for i, frame in enumerate(source.frames()):
      person = bool(track.person[i])
      label = f'frame {i}' + (f'  hyp {track.chosen[i]}' if person else '  no person')
      writer.write(video_overlay.render(
          frame, track.boxes[i], joints_2d[i] if person else None,
          pose[i] if person else None, label))
  finally:
    writer.close()


def write_outputs(out_dir: str, name: str, source: video_io.FrameSource, track: Track,
                  joints_2d: np.ndarray, pose: np.ndarray, meta: dict[str, Any]) -> dict[str, str]:
  """Writes `<name>_poses.npz`, `<name>.json`, `<name>_overlay.mp4`, all or none.

  Each goes to a temporary file in `out_dir`; the three are renamed into
  place only after all are complete (on an error the temporaries are removed).

  Returns:
    {'npz', 'json', 'overlay'}: the paths.
  """
  paths = {'npz': os.path.join(out_dir, f'{name}_poses.npz'),
           'json': os.path.join(out_dir, f'{name}.json'),
           'overlay': os.path.join(out_dir, f'{name}_overlay.mp4')}
  with contextlib.ExitStack() as stack:
    tmp = {k: stack.enter_context(files.atomic_path(p)) for k, p in paths.items()}
    _write_overlay(tmp['overlay'], source, track, joints_2d, pose)
    np.savez_compressed(
        tmp['npz'], boxes=track.boxes, person=track.person, joints_2d=joints_2d,
        joints_2d_raw=track.joints_2d, joints_3d=pose, joints_3d_raw=track.pose,
        hypotheses=track.hyps, chosen=track.chosen, confidence=track.confidence,
        fps=np.float64(source.fps), frame_size=np.array([source.width, source.height]))
    record = dict(meta, frames=frame_records(track, joints_2d, pose, source.fps))
    with open(tmp['json'], 'w') as f:
      json.dump(record, f, indent=None, separators=(',', ':'))
  return paths


def _check_config(cfg: Any) -> None:
  checks = (('batch_size', cfg.batch_size >= 1, 'a positive integer'),
            ('box_margin', cfg.box_margin > 0, '> 0 (e.g. 1.25)'),
            ('fps', cfg.fps > 0, '> 0 frames per second'),
            ('track_min_iou', 0 <= cfg.track_min_iou <= 1, 'in [0, 1]'),
            ('search_scales', all(0 < float(v) <= 1 for v in cfg.search_scales),
             'fractions of the shorter frame side in (0, 1], e.g. (1.0, 0.7, 0.5)'))
  for key, ok, expected in checks:
    if not ok:
      raise errors.ConfigError(f'config.predict.{key}={cfg[key]!r} is invalid: expected '
                               f'{expected}')
  smoothing.check_config(cfg)


def _first_box(cfg: Any, source: video_io.FrameSource) -> np.ndarray | None:
  if not str(cfg.boxes).strip():
    return None
  if cfg.boxes_file:
    logging.warning('config.predict.boxes is ignored: config.predict.boxes_file gives '
                    'every frame its box')
    return None
  box = predict_lib.parse_box(cfg.boxes, 'config.predict.boxes')
  problem = video_io.check_box(box, source.height, source.width)
  if problem:
    raise errors.ConfigError(f'config.predict.boxes={cfg.boxes!r} (the first frame of '
                             f'{source.path}): {problem}')
  return box


def predict_video(config, workdir: str) -> dict[str, Any]:
  """`--mode=predict` with `config.predict.video`: see the module docstring.

  Args:
    config: finalised config.
    workdir: the experiment directory with the trained stages.

  Returns:
    {'paths': output files, 'track': the raw `Track`, 'joints_2d', 'joints_3d':
    smoothed, 'fps', 'frames_per_s': inference speed after the first batch}.

  Raises:
    errors.InputError / errors.ConfigError: bad video, boxes or settings,
      found before any output is written.
  """
  cfg = config.predict
  _check_config(cfg)
  source = video_io.FrameSource(str(cfg.video), cfg.fps)
  boxes = (video_io.read_boxes_file(cfg.boxes_file, source.num_frames, source.height,
                                    source.width, source.path) if cfg.boxes_file else None)
  first = _first_box(cfg, source)
  logging.info('video %s: %d frames of %dx%d at %.3g fps (%s)', source.path, source.num_frames,
               source.width, source.height, source.fps,
               'folder of frames: config.predict.fps' if source.is_folder else 'from the file')
  predictor = predict_lib.Predictor(config, workdir, with_maps=False)
  track = run_video(predictor, source, cfg, boxes, first)
  joints_2d, pose = smooth_track(track, cfg, source.fps)
  out_dir = cfg.output_dir or os.path.join(workdir, 'predict')
  os.makedirs(out_dir, exist_ok=True)
  name = os.path.splitext(os.path.basename(os.path.normpath(source.path)))[0]
  meta = {
      'video': source.path, 'fps': source.fps, 'num_frames': source.num_frames,
      'frame_size': [source.width, source.height],
      'box_source': 'boxes_file' if boxes is not None else 'tracking',
      'smoothing': cfg.smoothing, 'min_confidence': cfg.min_confidence,
      'joints_2d_source': 'hourglass' if 'hourglass' in predictor.loaded else
                          'projection of the base hypothesis',
      'joint_names': list(skeleton.JOINT_NAMES),
      'hypotheses_config': [list(h) for h in predictor.lay.hypotheses],
      'units': 'joints_2d: frame pixels (continuous: pixel (i, j) covers [j, j+1) x '
               '[i, i+1)); joints_3d_mm, hypotheses_mm: mm, camera frame, root-relative '
               '(thorax)'}
  paths = write_outputs(out_dir, name, source, track, joints_2d, pose, meta)
  logging.info('video %s: %d/%d frames with a person -> %s', source.path,
               int(track.person.sum()), source.num_frames, ', '.join(paths.values()))
  return {'paths': paths, 'track': track, 'joints_2d': joints_2d, 'joints_3d': pose,
          'fps': source.fps, 'frames_per_s': track.frames_per_s}
