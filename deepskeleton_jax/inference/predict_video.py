"""3D poses of the people in a user's video, smoothed over time, with an overlay video.

  python run.py --mode=predict --config=configs/demo.py --workdir=workdir/demo \
      --config.predict.video=clip.mp4 [--config.predict.boxes='x0 y0 x1 y1']

Input: a video file OpenCV reads or a folder of frames (sorted by name; its
frame rate is `config.predict.fps`, default 25). The people of each frame
come from, in this order:

- `config.predict.keypoints_file`: 2D keypoints of other tools (COCO-17 or
  our 16 joints, `people_io.py`): they give each person's box (the square
  around them, `box_margin` x their extent) and the 2D used by matching
  (weighted by their scores); the hourglass is not loaded; every entry is a
  person (no `min_confidence`); ids are the file's `track_id`s or tracked.
- `config.predict.boxes_file`: boxes with ids (`frame id x0 y0 x1 y1`, or the
  one-box-per-frame file of before: id 0), `people_io.py`.
- tracking: up to `config.predict.max_people` people (default 1). Each
  person's box is the square around its previous frame's 2D joints
  (`tracking.box_from_joints`). At the start, and at the start of every
  batch while fewer than `max_people` are followed, a search runs: the whole
  frame and half-overlapping square windows (`search_scales`), each
  confident window's 2D joints give a box, the most confident boxes that
  overlap no followed person's box (non-maximum suppression) start new
  people (`search_scales=()` takes the whole frame itself). Tracking starts
  from `config.predict.boxes` when given. Identities go from frame to frame
  by box overlap with Hungarian assignment (`tracking.IdTracker`): new people
  get new ids, and a person lost for more than `max_lost_frames` frames ends
  its track. The search is no person detector: the demo's hourglass is
  confident on clutter too, and on 6 synthetic clips the search found the
  person on 3, the whole frame on none, a given first box on all 6. Give
  `boxes` (or a detector's `boxes_file`) when you can. When a search finds
  nobody and nobody is followed, the whole frame is run (its 2D starts no
  box: a pose network trained on person-filled crops makes loose 2D there).

A person whose mean detection confidence is below `min_confidence` is not
there (nothing is invented). Batching: crops go through one jitted
`pipeline.make_pipeline_fn` (maps of every hypothesis, regressors,
hourglass, matching), always `batch_size` crops (one compiled shape). Given
boxes fill every batch. Tracking is speculative: the frames of a batch share
the boxes of its first frame, and, walking the results in order, frame t is
kept while each shared box overlaps the box tracked from frame t - 1 by at
least `track_min_iou`; at the first frame where one does not (or a person is
lost), the batch is cut and the rest is rerun from there with the proper
boxes. Every kept crop is thus within that IoU of frame-by-frame tracking
(`track_min_iou=1.0` forces it); new people are looked for at batch starts.

Then each person's camera-space root is fitted (`people.py`) and its 2D
joints, 3D pose and root are smoothed over time (`smoothing.py`), and
`WORKDIR/predict/` (or `predict.output_dir`) gets `<name>_poses.npz` (every
person's arrays, `people.load_people` reads them back), `<name>.json` (per
frame its `people`) and `<name>_overlay.mp4` (each id in its colour beside
every person's 3D pose), renamed into place only when all three are complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Iterator

from absl import logging
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.experiment import metric_writer
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import bvh_writer
from deepskeleton_jax.inference import people as people_lib
from deepskeleton_jax.inference import people_io
from deepskeleton_jax.inference import predictor as predict_lib
from deepskeleton_jax.inference import smoothing
from deepskeleton_jax.inference import tracking
from deepskeleton_jax.inference import video_io
from deepskeleton_jax.inference import video_tracker
from deepskeleton_jax.visualization import video_overlay


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


def _run_given(run: video_tracker.Runner, source: video_io.FrameSource,
               given: list[list[people_io.GivenPerson]], cfg: Any,
               progress: _Progress) -> list[list[people_lib.Found]]:
  """Every given person of every frame, in full batches of crops."""
  found: list[list[people_lib.Found]] = [[] for _ in range(source.num_frames)]
  queue: list[tuple[int, people_io.GivenPerson, tuple]] = []

  def flush(final: bool) -> None:
    while queue and (final or len(queue) >= run.batch_size):
      chunk, queue[:] = queue[:run.batch_size], queue[run.batch_size:]
      out = run.run([crop for _, _, crop in chunk])
      for k, (i, person, _) in enumerate(chunk):
        person_found = video_tracker.found_from(out, k, person.id, person.box, cfg, person)
        if person_found is not None:
          found[i].append(person_found)

  frames: Iterator[np.ndarray] = source.frames()
  for i in range(source.num_frames):
    frame = next(frames)
    queue.extend((i, p, run.crop(frame, p.box)) for p in given[i])
    flush(final=i == source.num_frames - 1)
    progress.update(i + 1, force=i == source.num_frames - 1)
  for frame_found in found:  # the file's order within a frame does not matter
    frame_found.sort(key=lambda f: f.id)
  return found


def run_video(predictor: predict_lib.Predictor, source: video_io.FrameSource, cfg: Any,
              given: list[list[people_io.GivenPerson]] | None,
              first_box: np.ndarray | None) -> tuple[list[list[people_lib.Found]], int, float]:
  """Finds and predicts the people of every frame (see the module docstring).

  Args:
    predictor: the loaded pipeline (`with_maps=False` is enough).
    source: the frames.
    cfg: `config.predict`.
    given: per frame its people from a boxes or keypoints file, or None to track.
    first_box: tracking's first box, or None to search the first frame.

  Returns:
    (per frame its people, raw and without `root_camera_mm`; crops run through
    the network (padding and reruns included); frames per second after the
    first batch).
  """
  n, bsize = source.num_frames, int(cfg.batch_size)
  run = video_tracker.Runner(predictor, bsize)
  progress = _Progress(os.path.basename(source.path), n)
  if given is not None:
    found = _run_given(run, source, given, cfg, progress)
  else:
    tracker = video_tracker.Tracker(run, cfg, source.height, source.width, first_box)
    found, frames, pending, done = [], source.frames(), [], 0
    while done < n:
      while len(pending) < bsize and done + len(pending) < n:
        pending.append(next(frames))
      kept = tracker.batch(pending)
      found.extend(kept)
      pending, done = pending[len(kept):], done + len(kept)
      progress.update(done, force=done == n)
  rate = progress.rate()
  logging.info('video %s: %d crops through the network for %d frames (batches of %d, %s), '
               '%.1f frames/s after the first batch', source.path, run.crops_run, n, bsize,
               'given people' if given is not None else 'tracking', rate)
  return found, run.crops_run, rate


def _write_overlay(path: str, source: video_io.FrameSource,
                   records: list[dict[str, Any]]) -> None:
  writer = video_overlay.Writer(path, source.fps, source.height, source.width)
  try:
    for record, frame in zip(records, source.frames()):
      ids = ' '.join(str(p['id']) for p in record['people'])
      label = f"frame {record['frame']}  " + (f'people {ids}' if ids else 'no person')
      writer.write(video_overlay.render(frame, record['people'], label))
  finally:
    writer.close()


def write_outputs(out_dir: str, name: str, source: video_io.FrameSource,
                  people: dict[int, people_lib.PersonTrack], num_hyps: int,
                  meta: dict[str, Any]) -> dict[str, str]:
  """Writes `<name>_poses.npz`, `<name>.json`, `<name>_overlay.mp4`, all or none.

  Each goes to a temporary file in `out_dir`; the three are renamed into
  place only after all are complete (on an error the temporaries are removed).

  Returns:
    {'npz', 'json', 'overlay'}: the paths.
  """
  paths = {'npz': os.path.join(out_dir, f'{name}_poses.npz'),
           'json': os.path.join(out_dir, f'{name}.json'),
           'overlay': os.path.join(out_dir, f'{name}_overlay.mp4')}
  records = [{'frame': i, 'time_s': round(i / source.fps, 4),
              'people': people_lib.frame_people(people, i)} for i in range(source.num_frames)]
  with contextlib.ExitStack() as stack:
    tmp = {k: stack.enter_context(files.atomic_path(p)) for k, p in paths.items()}
    _write_overlay(tmp['overlay'], source, records)
    people_lib.save_npz(tmp['npz'], people, source.num_frames, num_hyps,
                        fps=np.float64(source.fps),
                        frame_size=np.array([source.width, source.height]),
                        intrinsics=np.asarray(meta['intrinsics'], np.float32))
    with open(tmp['json'], 'w') as f:
      json.dump(dict(meta, frames=records), f, indent=None, separators=(',', ':'))
  return paths


def write_bvh_files(out_dir: str, name: str, people: dict[int, people_lib.PersonTrack],
                    fps: float) -> dict[str, str]:
  """Writes `<name>_<id>.bvh` per person seen (`config.predict.bvh`).

  One BVH frame per video frame, from the smoothed 3D poses; frames where the
  person is unseen hold the nearest earlier pose (`bvh_writer.hold_gaps`). The
  root moves along `root_camera_mm` where that is known on some frame, else it
  stays fixed.

  Returns:
    {'bvh_<id>': path} per person written.
  """
  paths = {}
  for pid, person in people.items():
    if not person.present.any():
      continue
    poses = bvh_writer.hold_gaps(person.joints_3d, person.present)
    known = person.present & np.all(np.isfinite(person.root_camera_mm), axis=-1)
    root = bvh_writer.hold_gaps(person.root_camera_mm, known) if known.any() else None
    paths[f'bvh_{pid}'] = os.path.join(out_dir, f'{name}_{pid}.bvh')
    bvh_writer.write_bvh(paths[f'bvh_{pid}'], poses, fps, root)
  return paths


def check_config(cfg: Any) -> None:
  """Validates `config.predict`'s video and people fields (one `ConfigError`)."""
  checks = (('batch_size', cfg.batch_size >= 1, 'a positive integer'),
            ('box_margin', cfg.box_margin > 0, '> 0 (e.g. 1.25)'),
            ('fps', cfg.fps > 0, '> 0 frames per second'),
            ('track_min_iou', 0 <= cfg.track_min_iou <= 1, 'in [0, 1]'),
            ('max_people', cfg.max_people >= 1, 'a positive integer (1: one person)'),
            ('max_lost_frames', cfg.max_lost_frames >= 0, 'an integer >= 0 (frames)'),
            ('search_scales', all(0 < float(v) <= 1 for v in cfg.search_scales),
             'fractions of the shorter frame side in (0, 1], e.g. (1.0, 0.7, 0.5)'))
  for key, ok, expected in checks:
    if not ok:
      raise errors.ConfigError(f'config.predict.{key}={cfg[key]!r} is invalid: expected '
                               f'{expected}')
  if cfg.boxes_file and cfg.keypoints_file:
    raise errors.ConfigError('config.predict.boxes_file and config.predict.keypoints_file '
                             'are both set: expected one of them (keypoints give the boxes)')
  smoothing.check_config(cfg)


def _first_box(cfg: Any, source: video_io.FrameSource) -> np.ndarray | None:
  if not str(cfg.boxes).strip():
    return None
  if cfg.boxes_file or cfg.keypoints_file:
    logging.warning('config.predict.boxes is ignored: the boxes or keypoints file gives '
                    'every frame its people')
    return None
  box = predict_lib.parse_box(cfg.boxes, 'config.predict.boxes')
  problem = video_io.check_box(box, source.height, source.width)
  if problem:
    raise errors.ConfigError(f'config.predict.boxes={cfg.boxes!r} (the first frame of '
                             f'{source.path}): {problem}')
  return box


def read_given(cfg: Any, index: people_io.Index) -> list[list[people_io.GivenPerson]] | None:
  """The people of `boxes_file` or `keypoints_file` (None: neither is set)."""
  if cfg.keypoints_file:
    return people_io.read_keypoints_file(cfg.keypoints_file, index, cfg.box_margin,
                                         cfg.max_lost_frames)
  if cfg.boxes_file:
    return people_io.read_boxes_file(cfg.boxes_file, index)
  return None


def predict_video(config, workdir: str) -> dict[str, Any]:
  """`--mode=predict` with `config.predict.video`: see the module docstring.

  Args:
    config: finalised config.
    workdir: the experiment directory with the trained stages.

  Returns:
    {'paths': output files, 'people': {id: people.PersonTrack} (smoothed and
    raw), 'fps', 'num_frames', 'crops_run', 'frames_per_s': inference speed
    after the first batch}.

  Raises:
    errors.InputError / errors.ConfigError: bad video, files or settings,
      found before any output is written.
  """
  cfg = config.predict
  check_config(cfg)
  source = video_io.FrameSource(str(cfg.video), cfg.fps)
  camera = people_lib.intrinsics(cfg, source.height, source.width)
  given = read_given(cfg, people_io.Index([(source.height, source.width)] * source.num_frames))
  first = _first_box(cfg, source)
  logging.info('video %s: %d frames of %dx%d at %.3g fps (%s)', source.path, source.num_frames,
               source.width, source.height, source.fps,
               'folder of frames: config.predict.fps' if source.is_folder else 'from the file')
  predictor = predict_lib.Predictor(config, workdir, with_maps=False,
                                    with_hourglass=not cfg.keypoints_file)
  found, crops_run, rate = run_video(predictor, source, cfg, given, first)
  people_lib.finish([f for frame in found for f in frame], camera,
                    reselect=bool(cfg.keypoints_file))
  people = people_lib.assemble(found, predictor.lay.num_hyps, source.fps)
  people_lib.smooth_people(people, cfg)
  out_dir = cfg.output_dir or os.path.join(workdir, 'predict')
  os.makedirs(out_dir, exist_ok=True)
  name = os.path.splitext(os.path.basename(os.path.normpath(source.path)))[0]
  meta = {
      'video': source.path, 'fps': source.fps, 'num_frames': source.num_frames,
      'frame_size': [source.width, source.height],
      'box_source': ('keypoints_file' if cfg.keypoints_file else
                     'boxes_file' if cfg.boxes_file else 'tracking'),
      'smoothing': cfg.smoothing, 'min_confidence': cfg.min_confidence,
      'joints_2d_source': ('keypoints_file' if cfg.keypoints_file else
                           'hourglass' if 'hourglass' in predictor.loaded else
                           'projection of the base hypothesis'),
      'intrinsics': [round(float(v), 3) for v in camera],
      'intrinsics_source': ('config.predict.intrinsics' if str(cfg.intrinsics).strip() else
                            f'config.predict.fov_deg={cfg.fov_deg}'),
      'ids': [int(i) for i in people],
      'joint_names': list(skeleton.JOINT_NAMES),
      'hypotheses_config': [list(h) for h in predictor.lay.hypotheses],
      'units': 'box, joints_2d: frame pixels (continuous: pixel (i, j) covers [j, j+1) x '
               '[i, i+1)); pose_3d, hypotheses: mm, camera axes, root-relative (thorax); '
               'root_camera_mm: the root in the camera frame, mm; confidence: per joint'}
  paths = write_outputs(out_dir, name, source, people, predictor.lay.num_hyps, meta)
  if cfg.bvh:
    paths.update(write_bvh_files(out_dir, name, people, source.fps))
  logging.info('video %s: %d people (ids %s) -> %s', source.path, len(people),
               list(people), ', '.join(paths.values()))
  return {'paths': paths, 'people': people, 'fps': source.fps, 'num_frames': source.num_frames,
          'crops_run': crops_run, 'frames_per_s': rate}
