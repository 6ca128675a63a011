"""Evaluation of the whole pipeline on the test split, in the paper's tables.

For each test example: every hypothesis' SkeletonMapNet predicts fg/bg maps
from its crop, its PoseRegressor turns them into a 3D hypothesis; matching
against 2D detections (Stacked Hourglass checkpoint, a detections file, or the
ground truth 2D when asked) picks one (w Mul-Hyp). Alongside: each hypothesis
alone (the base one is w/o Mul-Hyp), Ensemble (mean of the ensemble stage's
regressors on the base maps), Oracle (least 3D error), GT Ske (regressors fed
maps rendered from the labels, base and matched) and Direct RGB. Writes
`<workdir>/eval/results.json` and `<workdir>/eval/report.md`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.training import checkpointing
from deepskeleton_jax.training import config_lib
from deepskeleton_jax.data import input_pipeline
from deepskeleton_jax.evaluation import matching
from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.training import parallel
from deepskeleton_jax.training import stages as stages_lib
from deepskeleton_jax.models import hourglass
from deepskeleton_jax.models import hypotheses

_ID_LEN = 48


def load_stages(config: ml_collections.ConfigDict, workdir: str,
                names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
  """Stage objects and trained variables of those stages that have checkpoints."""
  out = {}
  for name in names:
    try:
      loaded = checkpointing.load_variables(workdir, name)
    except FileNotFoundError as e:
      logging.info('%s', e)
      continue
    out[name] = {'stage': stages_lib.build(config, name), **loaded}
  return out


def make_predict_fn(config: ml_collections.ConfigDict, loaded: dict[str, Any]):
  """Returns a jittable fn(variables_by_stage, norms, batch) -> dict of outputs.

  Outputs (leading batch axis b unless noted):
    maps [H, b, s, s, 6] predicted fg/bg; hyps [b, H, 16, 3] from predicted
    maps; gt_hyps [b, H, 16, 3] from rendered maps; direct [b, 16, 3];
    ensemble [b, n, 16, 3]; detections [b, 16, 2] (c=1 input pixels).
  """
  size = config.data.input_size
  msize = stages_lib.map_size(config)
  rsize = config.regressor.input_size
  hyps = config_lib.hypothesis_list(config)
  crop_idx = stages_lib.crop_indices(config)
  widths = np.array([w for _, w in hyps], np.float32)
  unit = stages_lib.unit_crop_index(config)
  base = config.hypotheses.base
  method = stages_lib.hyp_map_method(config)

  def regress(name, variables, norm, maps):
    model = loaded[name]['stage'].model
    pred = hypotheses.apply_stacked(model, variables, stages_lib.resize_square(maps, rsize),
                                    train=False, hyp_map=method)
    return jnp.moveaxis(pred.astype(jnp.float32) * norm['std'] + norm['mean'], 0, 1)

  def fn(variables, norms, batch):
    out = {}
    if 'skeleton_net' in variables:
      logits = hypotheses.apply_stacked(
          loaded['skeleton_net']['stage'].model, variables['skeleton_net'],
          stages_lib.images_at(batch, crop_idx), train=False, hyp_map=method)
      out['maps'] = jax.nn.sigmoid(logits[-1].astype(jnp.float32))
    out['gt_maps'] = stages_lib.render_maps(batch, crop_idx, widths, size, msize)
    if 'regressor' in variables:
      if 'maps' in out:
        out['hyps'] = regress('regressor', variables['regressor'], norms['regressor'], out['maps'])
      out['gt_hyps'] = regress('regressor', variables['regressor'], norms['regressor'],
                               out['gt_maps'])
    if 'ensemble' in variables:
      n = loaded['ensemble']['stage'].num_hyps
      maps = out.get('maps', out['gt_maps'])[base:base + 1]
      out['ensemble'] = regress('ensemble', variables['ensemble'], norms['ensemble'],
                                jnp.broadcast_to(maps, (n,) + maps.shape[1:]))
    if 'direct_rgb' in variables:
      pred = hypotheses.apply_stacked(
          loaded['direct_rgb']['stage'].model, variables['direct_rgb'],
          stages_lib.images_at(batch, np.array([unit])), train=False, hyp_map=method)
      norm = norms['direct_rgb']
      out['direct'] = pred[0].astype(jnp.float32) * norm['std'] + norm['mean']
    if 'hourglass' in variables:
      stage = loaded['hourglass']['stage']
      x = stages_lib.resize_square(stages_lib.images_at(batch, np.array([unit])),
                                   config.hourglass.input_size)
      heat = hypotheses.apply_stacked(stage.model, variables['hourglass'], x, train=False,
                                      hyp_map=method)
      joints, conf = hourglass.decode_heatmaps(heat[-1][0].astype(jnp.float32))
      out['detections'] = joints * (4 * size / config.hourglass.input_size)
      out['detection_conf'] = conf
    del out['gt_maps']
    return out

  return fn


def _encode(strings: np.ndarray) -> np.ndarray:
  out = np.zeros((len(strings), _ID_LEN), np.uint8)
  for i, s in enumerate(strings):
    b = (s.decode() if isinstance(s, bytes) else str(s)).encode()[:_ID_LEN]
    out[i, :len(b)] = np.frombuffer(b, np.uint8)
  return out


def _decode(codes: np.ndarray) -> list[str]:
  return [bytes(c).rstrip(b'\0').decode(errors='replace') for c in codes]


def _to_host(x):
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _detections_from_file(path: str, batch: dict[str, np.ndarray], unit: int) -> np.ndarray:
  """Published detections (original-image pixels, indexed by example) -> input pixels."""
  dets = hourglass.load_detections(path)
  dets = dets[0] if isinstance(dets, tuple) else dets
  idx = batch['index']
  if idx.max() >= len(dets):
    raise ValueError(f'{path}: has {len(dets)} detections but the eval split has '
                     f'example index {idx.max()}')
  to_input = camera.invert_affine(batch['input_to_image'][:, unit])
  return camera.apply_affine(np.asarray(dets)[idx].astype(np.float32), to_input)


def collect(config: ml_collections.ConfigDict, workdir: str) -> dict[str, np.ndarray]:
  """Runs every available stage over the eval split; returns host arrays."""
  loaded = load_stages(config, workdir, ('skeleton_net', 'regressor', 'direct_rgb',
                                         'ensemble', 'hourglass'))
  if 'regressor' not in loaded and 'direct_rgb' not in loaded:
    raise FileNotFoundError(
        f'nothing to evaluate in {workdir}: no regressor or direct_rgb checkpoint '
        '(train them with --mode=train first)')
  mesh = parallel.make_mesh(config.parallel.hyp_axis)
  rep = parallel.replicated(mesh)
  variables = {k: jax.device_put(v['variables'], rep) for k, v in loaded.items()}
  norms = {k: jax.device_put(v['norm'], rep) for k, v in loaded.items()}
  predict = jax.jit(make_predict_fn(config, loaded))
  detections = config.eval.detections
  if detections == 'hourglass' and 'hourglass' not in loaded:
    raise FileNotFoundError(
        f"config.eval.detections='hourglass' but {checkpointing.checkpoint_dir(workdir, 'hourglass')} "
        "has no checkpoint: train the hourglass stage, or set "
        "--config.eval.detections=ground_truth or a detections file")
  unit = stages_lib.unit_crop_index(config)
  bs = config.eval.batch_size
  bs = -(-bs // mesh.shape[parallel.DATA]) * mesh.shape[parallel.DATA]
  it = input_pipeline.make_iterator(
      config.data, config.data.eval_split, bs, shuffle=False, num_epochs=1, seed=0,
      process_index=jax.process_index(), process_count=jax.process_count(),
      drop_remainder=False)
  chunks: dict[str, list[np.ndarray]] = {}
  seen, t0 = 0, time.time()
  for i, local in enumerate(it):
    out = predict(variables, norms, parallel.global_batch(local, mesh))
    if i == 0:  # Every process has compiled `predict` before the first gather.
      parallel.barrier('eval predict compiled')
    out = {k: _to_host(v) for k, v in out.items()}
    if 'maps' in out:
      out['maps'] = np.moveaxis(out['maps'], 0, 1)  # [b, H, s, s, 6]
    for key in ('joints_3d', 'visible', 'index', 'mask', 'has_3d', 'head_size',
                'joints_2d', 'intrinsics', 'has_intrinsics', 'input_to_image', 'image'):
      out[key] = _to_host(parallel.global_batch({key: local[key]}, mesh)[key])
    if detections not in ('hourglass', 'ground_truth'):
      out['detections'] = _to_host(parallel.global_batch(
          {'d': _detections_from_file(detections, local, unit)}, mesh)['d'])
    out['action'] = _to_host(parallel.global_batch(
        {'a': _encode(local['action'])}, mesh)['a'])
    keep = out['mask'].astype(bool)
    for k, v in out.items():
      chunks.setdefault(k, []).append(v[keep])
    seen += int(keep.sum())
    if (i + 1) % 10 == 0:
      logging.info('eval: %d examples, %.1f examples/s', seen, seen / (time.time() - t0))
    if config.eval.max_examples and seen >= config.eval.max_examples:
      break
  data = {k: np.concatenate(v) for k, v in chunks.items()}
  if config.eval.max_examples:
    data = {k: v[:config.eval.max_examples] for k, v in data.items()}
  if detections == 'ground_truth':
    data['detections'] = data['joints_2d'][:, unit]
  data['action'] = np.array(_decode(data['action']))
  logging.info('eval: %d examples in %.1f s', len(data['mask']), time.time() - t0)
  return data


def score(config: ml_collections.ConfigDict, data: dict[str, np.ndarray]) -> dict[str, Any]:
  """Computes the comparison rows; returns JSON-serialisable results."""
  unit = stages_lib.unit_crop_index(config)
  base = config.hypotheses.base
  hyps_cfg = config_lib.hypothesis_list(config)
  gt = data['joints_3d']
  has3d = data['has_3d'].astype(bool)
  vis = data['visible']
  dets = data.get('detections')
  intr = data['intrinsics'][:, unit] if data['has_intrinsics'].all() else None
  poses: dict[str, np.ndarray] = {}
  choice: dict[str, np.ndarray] = {}

  if 'direct' in data:
    poses['Direct RGB'] = data['direct']
  if 'hyps' in data:
    poses['Ours w/o Mul-Hyp'] = data['hyps'][:, base]
  if 'ensemble' in data:
    poses['Ensemble'] = np.asarray(matching.ensemble_mean(data['ensemble']))
  if 'hyps' in data and dets is not None:
    idx, pose = matching.select(data['hyps'], dets, vis, intr)
    poses['Ours w Mul-Hyp'], choice['Ours w Mul-Hyp'] = np.asarray(pose), np.asarray(idx)
  if 'hyps' in data and has3d.any():
    idx, pose = matching.oracle(data['hyps'], gt)
    poses['Oracle'], choice['Oracle'] = np.asarray(pose), np.asarray(idx)
  if 'gt_hyps' in data:
    poses['GT Ske w/o Mul-Hyp'] = data['gt_hyps'][:, base]
    if dets is not None:
      idx, pose = matching.select(data['gt_hyps'], dets, vis, intr)
      poses['GT Ske w Mul-Hyp'] = np.asarray(pose)
  per_hyp = {}
  if 'hyps' in data:
    for i, (c, w) in enumerate(hyps_cfg):
      per_hyp[f'hyp {i} (c={c:g}, l={w:g})'] = data['hyps'][:, i]

  results: dict[str, Any] = {'num_examples': int(len(gt)),
                             'detections': str(config.eval.detections),
                             'hypotheses': [list(h) for h in hyps_cfg], 'base': base}
  if has3d.any():
    actions = data['action'][has3d]
    table, avg, pa = {}, {}, {}
    for name, pose in {**poses, **per_hyp}.items():
      err = np.asarray(metrics.mpjpe(pose[has3d], gt[has3d]))
      pa[name] = float(np.mean(np.asarray(metrics.pa_mpjpe(pose[has3d], gt[has3d]))))
      avg[name] = float(err.mean())
      table[name] = {a: float(err[actions == a].mean()) for a in sorted(set(actions))}
    results.update({'mpjpe': avg, 'pa_mpjpe': pa, 'mpjpe_per_action': table})
    for name, idx in choice.items():
      results[f'{name} choice histogram'] = np.bincount(idx, minlength=len(hyps_cfg)).tolist()
  if (data['head_size'][:, unit] > 0).any():
    head = data['head_size'][:, unit]
    gt2d = data['joints_2d'][:, unit]
    pck = {}
    if dets is not None:
      pck[f'2D detections ({config.eval.detections})'] = metrics.pckh(dets, gt2d, head, vis)
      for name, pose in poses.items():
        pck[name] = metrics.pckh(_project_like(pose, dets, vis, intr), gt2d, head, vis)
    results['pckh'] = {k: {'per_joint': np.asarray(v['per_joint']).tolist(),
                           'mean': float(v['mean'])} for k, v in pck.items()}
  return results


def _project_like(pose, dets, vis, intr):
  """2D of a root-relative 3D pose, placed by fitting to the detections."""
  if intr is None:
    s, o = camera.fit_scaled_orthographic(pose, dets, vis.astype(np.float32))
    return np.asarray(pose[..., :2] * s[..., None, None] + o[..., None, :])
  t = matching.fit_root_translation(pose[:, None], dets, vis, intr)[:, 0]
  return np.asarray(camera.project_intrinsics(pose + np.asarray(t)[:, None], intr))


def report(config: ml_collections.ConfigDict, results: dict[str, Any]) -> str:
  """Markdown report with the paper's table layouts."""
  lines = [f'# DeepSkeleton-JAX evaluation: {config.data.name} / {config.data.eval_split}',
           '', f"{results['num_examples']} test examples; hypotheses (crop scale, stick "
           f"width): {results['hypotheses']}, base (w/o Mul-Hyp) = {results['base']}; "
           f"2D detections for matching: {results['detections']}.", '']
  if 'mpjpe' in results:
    order = [k for k in ('Direct RGB', 'Ours w/o Mul-Hyp', 'Ensemble', 'Ours w Mul-Hyp',
                         'Oracle', 'GT Ske w/o Mul-Hyp', 'GT Ske w Mul-Hyp')
             if k in results['mpjpe']]
    lines += ['## MPJPE (mm, root-aligned; Table 2 layout)', '',
              metrics.comparison_table({k: results['mpjpe'][k] for k in order}), '',
              '## PA-MPJPE (mm, Procrustes-aligned)', '',
              metrics.comparison_table({k: results['pa_mpjpe'][k] for k in order},
                                       'Avg PA-MPJPE'), '',
              '## MPJPE per action (mm; Table 1/6 layout)', '',
              _action_table({k: results['mpjpe_per_action'][k] for k in order}), '',
              '## Each hypothesis alone (MPJPE, mm)', '',
              metrics.comparison_table({k: v for k, v in results['mpjpe'].items()
                                        if k.startswith('hyp ')}), '']
    for key in results:
      if key.endswith('choice histogram'):
        lines += [f'{key}: {results[key]}', '']
  if 'pckh' in results:
    lines += ['## PCKh@0.5 (Table 8 layout)', '',
              metrics.pckh_table({k: {'per_joint': np.array(v['per_joint']), 'mean': v['mean']}
                                  for k, v in results['pckh'].items()}), '']
  return '\n'.join(lines)


def _action_table(rows: dict[str, dict[str, float]]) -> str:
  try:
    return metrics.per_action_table(rows)
  except ValueError:  # not Human3.6M actions (e.g. the synthetic set)
    return metrics.generic_table(rows)


def _write_atomic(path: str, text: str) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the evaluation and writes results.json and report.md.

  Args:
    config: finalised config.
    workdir: experiment directory with the trained stages.

  Returns:
    The results dict.
  """
  data = collect(config, workdir)
  results = score(config, data)
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, 'eval')
    os.makedirs(out_dir, exist_ok=True)
    _write_atomic(os.path.join(out_dir, 'results.json'), json.dumps(results, indent=2))
    text = report(config, results)
    _write_atomic(os.path.join(out_dir, 'report.md'), text)
    _figures(config, data, out_dir)
    logging.info('eval: wrote %s/results.json and report.md\n%s', out_dir, text)
  return results


def _figures(config, data, out_dir):
  from deepskeleton_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
  unit = stages_lib.unit_crop_index(config)
  n = min(config.eval.num_figures, len(data['mask']))
  for i in range(n):
    image = data['image'][i, unit]
    if 'maps' in data:
      b = config.hypotheses.base
      figures.skeleton_maps_figure(image, data['maps'][i, b, ..., :3], data['maps'][i, b, ..., 3:],
                                     os.path.join(out_dir, f'maps_{i}.png'),
                                     title=f'example {int(data["index"][i])}: predicted maps')
    if 'hyps' in data and 'detections' in data:
      intr = data['intrinsics'][i:i + 1, unit] if data['has_intrinsics'][i] else None
      hyps = data['hyps'][i]
      proj = np.stack([_project_like(h[None], data['detections'][i:i + 1],
                                     data['visible'][i:i + 1], intr)[0] for h in hyps])
      idx, _ = matching.select(hyps[None], data['detections'][i:i + 1],
                               data['visible'][i:i + 1], intr)
      figures.hypotheses_figure(os.path.join(out_dir, f'hypotheses_{i}.png'), image, proj,
                                  hyps, int(idx[0]),
                                  gt_3d=data['joints_3d'][i] if data['has_3d'][i] else None)

