"""Evaluation of the whole pipeline on the test split, in the paper's tables.

For each test batch: every hypothesis' SkeletonMapNet predicts fg/bg maps from
its crop, its PoseRegressor turns them into a 3D hypothesis, and matching
against 2D detections (a Stacked Hourglass checkpoint, a detections file, or
the ground-truth 2D when asked) picks one (`inference/pipeline.py`); the comparison rows
are scored and added up (`scoring.py`), so memory stays flat however large
the test set; only `eval.num_figures` examples are kept, for figures. Writes
`<workdir>/eval/results.json`, `report.md` (`report.py`) and the figures.
This is the only mode that opens `config.data.eval_split`.

A detections file is joined to the examples by their keys (`detections.py`:
MPII files through the split's recorded person order, VideoPose3D files by
subject, action, camera and frame), never by their position in the split.
Without a trained regressor or direct_rgb stage, the detections of a file
or of the hourglass are scored alone (the "2D detections" rows).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.data import input_pipeline
from deepskeleton_jax.data import registry
from deepskeleton_jax.evaluation import detections as detections_lib
from deepskeleton_jax.inference import pipeline
from deepskeleton_jax.inference import matching
from deepskeleton_jax.inference import render_compare
from deepskeleton_jax.evaluation import report
from deepskeleton_jax.evaluation import scoring
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.experiment import metric_writer
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.experiment import stages as stages_lib

_ID_LEN = 128  # Bytes of an id string gathered across processes.
_LABELS = ('joints_3d', 'visible', 'index', 'frame', 'mask', 'has_3d', 'head_size',
           'joints_2d', 'intrinsics', 'has_intrinsics', 'input_to_image')
POSE_STAGES = ('regressor', 'direct_rgb')


def _encode(strings: np.ndarray) -> np.ndarray:
  out = np.zeros((len(strings), _ID_LEN), np.uint8)
  for i, s in enumerate(strings):
    b = (s.decode() if isinstance(s, bytes) else str(s)).encode()
    if len(b) > _ID_LEN:
      raise errors.InputError(f'example id {b.decode()!r} is longer than {_ID_LEN} bytes')
    out[i, :len(b)] = np.frombuffer(b, np.uint8)
  return out


def _decode(codes: np.ndarray) -> np.ndarray:
  return np.array([bytes(c).rstrip(b'\0').decode(errors='replace') for c in codes])


def _to_host(x):
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class RenderCompare:
  """The pipeline's render-and-compare selection and refinement, per eval batch."""

  def __init__(self, config: ml_collections.ConfigDict, lay: stages_lib.Layout):
    self.settings = render_compare.settings(config)
    self._batch_size = int(config.eval.batch_size)
    self._geom = render_compare.geometry(lay)
    self._fn = jax.jit(functools.partial(render_compare.choose_and_refine,
                                         geom=self._geom, s=self.settings,
                                         map_row=True))
    self.seconds, self.examples, self._calls, self.first_call_s = 0.0, 0, 0, None

  def __call__(self, data: dict[str, np.ndarray], weights: np.ndarray,
               intrinsics: np.ndarray | None) -> dict[str, np.ndarray]:
    """`choose_and_refine` outputs for one batch (padded to the batch size: one compile)."""
    b = len(data['hyps'])
    pad = lambda x: None if x is None else np.concatenate(
        [x, np.repeat(x[-1:], max(0, self._batch_size - b), axis=0)])
    args = [pad(x) for x in (data['hyps'], data['maps'], data['detections'], weights,
                             intrinsics)]
    t0 = time.perf_counter()
    out = jax.device_get(self._fn(*args))
    if self._calls:  # The first call compiles.
      self.seconds += time.perf_counter() - t0
      self.examples += b
    else:
      self.first_call_s = time.perf_counter() - t0
    self._calls += 1
    return {k: np.asarray(v)[:b] for k, v in out.items()}

  def figure_maps(self, ex: dict[str, np.ndarray], intrinsics: np.ndarray | None
                  ) -> dict[str, np.ndarray]:
    """One example's chosen hypothesis rendered at its maps' geometry, before and after refinement."""
    chosen = int(ex['rc_chosen'])
    render = lambda pose: np.asarray(render_compare.render_pose(
        pose, ex['detections'], ex['weights'], intrinsics, self._geom, self.settings))[chosen]
    out = {'rc_rendered': render(ex['rc_selected'])}
    if self.settings.steps > 0:
      out['rc_refined'] = render(ex['rc_pose'])
    return out

  def summary(self) -> dict[str, Any]:
    """The settings and the measured cost (first batch: compile included), for results.json."""
    ms = 1000 * self.seconds / self.examples if self.examples else None
    return {'matching': self.settings.method, 'maps_row_method': self.settings.map_method,
            'refine_steps': self.settings.steps, 'ms_per_example': ms,
            'first_batch_s': self.first_call_s,
            'settings': dataclasses.asdict(self.settings)}


class DetectionSource:
  """Where matching's 2D detections and their weights come from."""

  def __init__(self, config: ml_collections.ConfigDict, loaded: dict[str, Any],
               workdir: str):
    self.name = str(config.eval.detections)
    self._unit = stages_lib.layout(config).unit
    self._file = None
    if self.name == 'hourglass':
      if 'hourglass' not in loaded:
        raise errors.CheckpointNotFoundError(
            "config.eval.detections='hourglass' but "
            f"{checkpointing.checkpoint_dir(workdir, 'hourglass')} has no checkpoint: "
            'train the hourglass stage, or set --config.eval.detections=ground_truth '
            'or a detections file')
      self.weights = 'hourglass heatmap maxima'
    elif self.name == 'ground_truth':
      self.weights = 'ground-truth visibility'
    else:
      self._file = detections_lib.open_detections(
          self.name, config.eval.detections_convention,
          lambda: registry.row_order(config.data, config.data.eval_split))
      self.weights = ("the file's scores" if self._file.has_scores
                      else 'all ones (the file has no scores)')

  def __call__(self, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(detections [b, 16, 2] in input pixels of the c = 1 crop, weights [b, 16]).

    A file's rows are looked up by the examples' id fields (`image_name`,
    `frame`; `subject`, `action`, `camera`).
    """
    if self.name == 'hourglass':
      return data['detections'], np.clip(data['detection_conf'], 0.0, None)
    if self.name == 'ground_truth':
      return data['joints_2d'][:, self._unit], data['visible'].astype(np.float32)
    joints, scores = self._file.lookup(data)
    to_input = camera.invert_affine(data['input_to_image'][:, self._unit])
    dets = camera.apply_affine(joints, to_input)
    weights = np.ones(dets.shape[:2], np.float32) if scores is None else scores
    return np.asarray(dets, np.float32), np.clip(weights, 0.0, None)


def _batches(config, loaded):
  """Yields host dicts of pipeline outputs and labels, real examples only."""
  mesh = parallel.make_mesh(config.parallel.hyp_axis)
  rep = parallel.replicated(mesh)
  variables = {k: jax.device_put(v['variables'], rep) for k, v in loaded.items()}
  norms = {k: jax.device_put(v['norm'], rep) for k, v in loaded.items()}
  predict = jax.jit(pipeline.make_predict_fn(config, loaded)) if loaded else None
  bs = config.eval.batch_size
  bs = -(-bs // mesh.shape[parallel.DATA]) * mesh.shape[parallel.DATA]
  shard, num_shards = parallel.data_shard(mesh)
  it = input_pipeline.make_iterator(
      config.data, config.data.eval_split, bs, shuffle=False, num_epochs=1, seed=0,
      process_index=shard, process_count=num_shards, drop_remainder=False)
  for i, local in enumerate(it):
    out = predict(variables, norms, parallel.global_batch(local, mesh)) if predict else {}
    if i == 0:  # Every process has compiled `predict` before the first gather.
      parallel.barrier('eval predict compiled')
    data = {k: _to_host(v) for k, v in out.items()}
    if 'maps' in data:
      data['maps'] = np.moveaxis(data['maps'], 0, 1)  # [b, H, s, s, 6]
    labels = parallel.global_batch({k: local[k] for k in _LABELS}, mesh)
    data.update({k: _to_host(v) for k, v in labels.items()})
    image = parallel.global_batch({'image': local['image']}, mesh)['image']
    data['image'] = _to_host(image[:, stages_lib.layout(config).unit])
    for name in input_pipeline.STRING_FIELDS:  # The ids that name each example.
      data[name] = _decode(_to_host(parallel.global_batch(
          {'a': _encode(local[name])}, mesh)['a']))
    keep = data['mask'].astype(bool)
    yield i, it.num_batches, {k: v[keep] for k, v in data.items()}


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the evaluation and writes results.json, report.md and figures.

  Args:
    config: finalised config.
    workdir: experiment directory with the trained stages.

  Returns:
    The results dict.
  """
  loaded = pipeline.load_stages(config, workdir)
  lay = stages_lib.layout(config)
  source = DetectionSource(config, loaded, workdir)
  if not any(k in loaded for k in POSE_STAGES):
    if source.name == 'ground_truth':
      raise errors.CheckpointNotFoundError(
          f'nothing to evaluate in {workdir}: no regressor or direct_rgb checkpoint '
          '(train them with --mode=train first, or score 2D detections with '
          '--config.eval.detections=FILE or a trained hourglass)')
    logging.warning('eval: no regressor or direct_rgb checkpoint in %s: scoring the 2D '
                    'detections (%s) alone', workdir, source.name)
  norm = next((loaded[k]['norm'] for k in ('regressor', 'direct_rgb', 'ensemble')
               if k in loaded), None)
  mean_pose = None if norm is None else np.asarray(norm['mean'])
  acc = scoring.Accumulator(lay, h36m_actions=config.data.name == 'human36m')
  compare = RenderCompare(config, lay) if {'skeleton_net', 'regressor'} <= set(loaded) else None
  kept: list[dict[str, np.ndarray]] = []
  t0, limit = time.time(), int(config.eval.max_examples)
  for i, num_batches, data in _batches(config, loaded):
    if limit:
      data = {k: v[:max(0, limit - acc.num_examples)] for k, v in data.items()}
    data['detections'], weights = source(data)
    intr = data['intrinsics'][:, lay.unit] if data['has_intrinsics'].all() else None
    picked = None
    if compare is not None and len(data['hyps']):
      found = compare(data, weights, intr)
      picked = {'map_chosen': found['map_chosen']}
      if compare.settings.steps > 0:
        picked['refined'] = found['pose']
      data.update(rc_chosen=found['chosen'], rc_selected=found['selected'], rc_pose=found['pose'])
    poses, choice = scoring.comparison_poses(data, lay, mean_pose, weights, intr, picked)
    acc.add(data, poses, choice, weights, intr)
    if len(kept) < config.eval.num_figures:
      new = _figure_examples(data, weights, config.eval.num_figures - len(kept))
      for ex in new if picked is not None else ():
        ex.update(compare.figure_maps(ex, None if intr is None else ex['intrinsics'][lay.unit]))
      kept += new
    if (i + 1) % 10 == 0 or i + 1 == num_batches:
      rate = acc.num_examples / max(time.time() - t0, 1e-9)
      logging.info('eval: batch %d/%d, %d examples, %.1f examples/s, ETA %s', i + 1,
                   num_batches, acc.num_examples, rate, metric_writer.format_eta(
                       (num_batches - i - 1) * (acc.num_examples / (i + 1)) / rate))
    if limit and acc.num_examples >= limit:
      break
  results = {'detections': source.name, 'matching_weights': source.weights,
             'hypotheses': [list(h) for h in lay.hypotheses], 'base': lay.base,
             **acc.results()}
  if compare is not None:
    results['render_compare'] = compare.summary()
  logging.info('eval: %d examples in %.1f s', acc.num_examples, time.time() - t0)
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, 'eval')
    os.makedirs(out_dir, exist_ok=True)
    files.write_text(os.path.join(out_dir, 'results.json'), json.dumps(results, indent=2))
    text = report.markdown(results, config.data.name, config.data.eval_split)
    files.write_text(os.path.join(out_dir, 'report.md'), text)
    _figures(lay, kept, out_dir)
    logging.info('eval: wrote %s/results.json and report.md\n%s', out_dir, text)
  return results


def _figure_examples(data, weights, n):
  """The first `n` examples of a batch, as single-example dicts for figures."""
  data = {**data, 'weights': weights}
  return [{k: v[i] for k, v in data.items()} for i in range(min(n, len(data['mask'])))]


def _figures(lay: stages_lib.Layout, kept: list[dict[str, np.ndarray]], out_dir: str):
  from deepskeleton_jax.visualization import figures  # pylint: disable=g-import-not-at-top
  for i, ex in enumerate(kept):
    if 'rc_rendered' in ex:
      figures.render_compare_figure(
          os.path.join(out_dir, f'render_compare_{i}.png'), ex['maps'][ex['rc_chosen']],
          ex['rc_rendered'], ex.get('rc_refined'),
          title=f"example {int(ex['index'])}: hypothesis {int(ex['rc_chosen'])}")
    title = f"example {int(ex['index'])}"
    if 'maps' in ex:
      maps = ex['maps'][lay.base]
      figures.skeleton_maps_figure(ex['image'], maps[..., :3], maps[..., 3:],
                                   os.path.join(out_dir, f'maps_{i}.png'),
                                   title=f'{title}: predicted maps')
    if 'hyps' in ex:
      intr = ex['intrinsics'][lay.unit][None] if ex['has_intrinsics'] else None
      dets, w = ex['detections'][None], ex['weights'][None]
      proj = np.stack([scoring.place_in_image(h[None], dets, w, intr)[0] for h in ex['hyps']])
      idx, _ = matching.select(ex['hyps'][None], dets, w, intr)
      figures.hypotheses_figure(os.path.join(out_dir, f'hypotheses_{i}.png'), ex['image'],
                                proj, ex['hyps'], int(idx[0]),
                                gt_3d=ex['joints_3d'] if ex['has_3d'] else None)

