"""3D poses for a user's own images, with figures.

For each image and person (a box `x0 y0 x1 y1` from `config.predict.boxes`,
else the whole image; or several people per image from `boxes_file` or
`keypoints_file`, keyed by the image's file name, see `people_io.py`),
crops at every hypothesis' crop scale, runs the trained SkeletonMapNet and
regressors, matches the hypotheses against the 2D (the hourglass' detections
or the keypoints file's; scaled orthographic, weighted by the confidences),
fits the root's camera-space position (`people.py`), and writes
`<name>.json` (`"people"`: per person its id, box, 2D joints in image pixels,
confidences, chosen 3D pose, root in camera space, hypotheses; with one
person and no file also the one-person fields of before: `box`, `joints_2d`,
`chosen_hypothesis`, `joints_3d_mm`, `hypotheses_mm`) and a figure per person
(`<name>.png`, with a file `<name>_<id>.png`: input with 2D overlay, fg/bg
maps, the chosen 3D pose from a novel viewpoint with the other hypotheses
faded behind it). `predict_video.py` does the same for videos.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import pathlib
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import people as people_lib
from deepskeleton_jax.inference import people_io
from deepskeleton_jax.inference import predict_video
from deepskeleton_jax.inference import predictor as predictor_lib
from deepskeleton_jax.inference import video_io
from deepskeleton_jax.visualization import figures


def output_names(paths: list[str]) -> list[str]:
  """The output name of each input image: `<name>.json`, `<name>.png`.

  The rule: an image's name is its file name without the extension. Images
  whose names clash and that are all different files (`a/good.jpg`,
  `b/good.jpg`) are prefixed with as many of their parent folders as tell them
  apart, joined by '_' (`a_good`, `b_good`). Names that still clash (a file
  listed twice, say with two boxes, or names differing only in the extension)
  get `_<k>`, k the image's 1-based position in `config.predict.images`
  (`good.jpg,good.png` -> `good_1`, `good_2`).

  Args:
    paths: the images, as given.

  Returns:
    Distinct names, one per path, in order.
  """
  stems = [pathlib.PurePath(p).stem for p in paths]
  folders = [pathlib.PurePath(os.path.abspath(p)).with_suffix('').parts[1:] for p in paths]
  names = list(stems)
  for stem, count in collections.Counter(stems).items():
    group = [i for i, s in enumerate(stems) if s == stem]
    if count == 1 or len({folders[i] for i in group}) < count:
      continue  # unique, or the same path twice: `_<k>` below
    depth = next(d for d in itertools.count(2)
                 if len({folders[i][-d:] for i in group}) == count)
    for i in group:
      names[i] = '_'.join(folders[i][-depth:])
  counts = collections.Counter(names)
  names = [f'{n}_{i + 1}' if counts[n] > 1 else n for i, n in enumerate(names)]
  if len(set(names)) != len(names):
    raise errors.ConfigError(f'config.predict.images={",".join(paths)!r}: cannot give the '
                             f'images distinct output names (got {names}); rename them')
  return names


def _checked_boxes(text: str, paths: list[str], images: list) -> list:
  """`config.predict.boxes` parsed and each checked against its image (one line if bad)."""
  boxes = predictor_lib.parse_boxes(text, len(paths))
  for k, (path, image, box) in enumerate(zip(paths, images, boxes)):
    problem = None if box is None else video_io.check_box(box, *image.shape[:2], what='image')
    if problem:
      raise errors.ConfigError(f'config.predict.boxes: box {k + 1} {box.tolist()} for '
                               f'{path}: {problem}')
  return boxes


def predict(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Predicts every image in `config.predict.images`, or `config.predict.video`.

  Outputs go to `config.predict.output_dir` (default WORKDIR/predict) as
  `<name>.json` and `<name>.png`, `<name>` from `output_names`.

  Args:
    config: finalised config.
    workdir: the experiment directory with the trained stages.

  Returns:
    The JSON records of the images, or with `config.predict.video` what
    `predict_video.predict_video` returns.
  """
  if str(config.predict.video).strip():
    if str(config.predict.images).strip():
      raise errors.ConfigError('config.predict.images and config.predict.video are both '
                               'set: expected one of them')
    return predict_video.predict_video(config, workdir)
  paths = [p.strip() for p in str(config.predict.images).split(',') if p.strip()]
  if not paths:
    raise errors.ConfigError('config.predict.images is empty: pass '
                             '--config.predict.images=a.jpg,b.jpg (or '
                             '--config.predict.video=clip.mp4)')
  cfg = config.predict
  predict_video.check_config(cfg)
  from_file = bool(cfg.boxes_file or cfg.keypoints_file)
  if from_file and str(cfg.boxes).strip():
    raise errors.ConfigError('config.predict.boxes and a boxes or keypoints file are both '
                             'set: expected one of them')
  names = output_names(paths)
  images = [image_ops.read_image(p) for p in paths]  # every file is checked first
  boxes = _checked_boxes(cfg.boxes, paths, images)
  given = predict_video.read_given(cfg, people_io.Index([i.shape[:2] for i in images], paths))
  if given is None:  # one person per image: its box, or the whole image
    given = [[people_io.GivenPerson(0, np.array([0, 0, i.shape[1], i.shape[0]], np.float32)
                                    if b is None else b)] for i, b in zip(images, boxes)]
  predictor = predictor_lib.Predictor(config, workdir, with_hourglass=not cfg.keypoints_file)
  out_dir = cfg.output_dir or os.path.join(workdir, 'predict')
  os.makedirs(out_dir, exist_ok=True)
  source = ('keypoints_file' if cfg.keypoints_file else 'hourglass'
            if 'hourglass' in predictor.loaded else 'projection of the base hypothesis')
  records = []
  for path, name, image, persons, box in zip(paths, names, images, given, boxes):
    camera = people_lib.intrinsics(cfg, *image.shape[:2])
    found, maps = _image_people(predictor, image, persons, camera, bool(cfg.keypoints_file))
    record = {'image': path, 'joints_2d_source': source,
              'joint_names': list(skeleton.JOINT_NAMES),
              'hypotheses_config': [list(h) for h in predictor.lay.hypotheses],
              'intrinsics': [round(float(v), 3) for v in camera],
              'people': [people_lib.record(f.id, f.box, f.joints_2d, f.confidence, f.pose,
                                           f.root_camera_mm, f.chosen, f.hyps) for f in found]}
    if not from_file:  # the one-person fields of before
      f = found[0]
      record.update(box=None if box is None else f.box.tolist(),
                    joints_2d=predictor_lib.json_array(f.joints_2d), chosen_hypothesis=f.chosen,
                    joints_3d_mm=predictor_lib.json_array(f.pose),
                    hypotheses_mm=[predictor_lib.json_array(h) for h in f.hyps])
    files.write_text(os.path.join(out_dir, f'{name}.json'),
                     json.dumps(record, indent=1, allow_nan=False))
    for f, person_maps in zip(found, maps):
      figure = f'{name}.png' if not from_file else f'{name}_{f.id}.png'
      figures.prediction_figure(os.path.join(out_dir, figure), image, f.joints_2d,
                                person_maps[f.chosen, ..., :3], person_maps[f.chosen, ..., 3:],
                                f.hyps, f.chosen, title=f'{name}: hypothesis {f.chosen} chosen')
    logging.info('predict: %s -> %s/%s.{json,png} (%d people)', path, out_dir, name, len(found))
    records.append(record)
  return records


def _image_people(predictor: predictor_lib.Predictor, image: np.ndarray,
                  persons: list[people_io.GivenPerson], camera: np.ndarray,
                  reselect: bool) -> tuple[list[people_lib.Found], list[np.ndarray]]:
  """The people of one image (all kept: no confidence threshold) and their maps."""
  if not persons:
    return [], []
  out = predictor(predictor_lib.make_batch([image] * len(persons), [p.box for p in persons],
                                           predictor.crop_scales, predictor.lay.input_size))
  found = []
  for k, p in enumerate(persons):
    given = p.joints_2d is not None
    found.append(people_lib.Found(
        id=p.id, box=p.box, joints_2d=p.joints_2d if given else out['joints_2d'][k],
        confidence=p.scores if given else out['confidence'][k], hyps=out['hyps'][k],
        chosen=int(out['chosen'][k]), pose=out['pose'][k]))
  people_lib.finish(found, camera, reselect)
  return found, list(out['maps'])
