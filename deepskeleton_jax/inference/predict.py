"""3D poses for a user's own images, with figures.

For each image (and optional person box `x0 y0 x1 y1`; otherwise the whole
image), crops at every hypothesis' crop scale, runs the trained SkeletonMapNet
and regressors, matches the hypotheses against the hourglass' 2D detections
(scaled orthographic, weighted by the detection confidences: a user's image
has no known camera), and writes `<name>.json` (2D joints in image pixels,
the chosen 3D pose, all hypotheses) and `<name>.png` (input with 2D overlay,
fg/bg maps, the chosen 3D pose from a novel viewpoint with the other
hypotheses faded behind it). `predict_video.py` does the same for videos.
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

from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.geometry import skeleton
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
  names = output_names(paths)
  images = [image_ops.read_image(p) for p in paths]  # every file is checked first
  boxes = _checked_boxes(config.predict.boxes, paths, images)
  predictor = predictor_lib.Predictor(config, workdir)
  out_dir = config.predict.output_dir or os.path.join(workdir, 'predict')
  os.makedirs(out_dir, exist_ok=True)
  source = 'hourglass' if 'hourglass' in predictor.loaded else 'projection of the base hypothesis'
  records = []
  for path, name, image, box in zip(paths, names, images, boxes):
    out = predictor(predictor_lib.make_batch([image], [box], predictor.crop_scales,
                                             predictor.lay.input_size))
    chosen, hyps = int(out['chosen'][0]), out['hyps'][0]
    record = {'image': path, 'box': None if box is None else box.tolist(),
              'joints_2d': predictor_lib.json_array(out['joints_2d'][0]),
              'joints_2d_source': source,
              'joint_names': list(skeleton.JOINT_NAMES), 'chosen_hypothesis': chosen,
              'joints_3d_mm': predictor_lib.json_array(hyps[chosen]),
              'hypotheses_mm': [predictor_lib.json_array(h) for h in hyps],
              'hypotheses_config': [list(h) for h in predictor.lay.hypotheses]}
    files.write_text(os.path.join(out_dir, f'{name}.json'),
                     json.dumps(record, indent=1, allow_nan=False))
    maps = out['maps'][0, chosen]
    figures.prediction_figure(os.path.join(out_dir, f'{name}.png'), image, out['joints_2d'][0],
                              maps[..., :3], maps[..., 3:], hyps, chosen,
                              title=f'{name}: hypothesis {chosen} chosen')
    logging.info('predict: %s -> %s/%s.{json,png}', path, out_dir, name)
    records.append(record)
  return records
