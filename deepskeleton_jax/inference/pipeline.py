"""The whole pipeline as one jittable function: crops -> maps -> hypotheses -> 2D.

`make_predict_fn` composes the trained stages through their `Stage.infer`
(`experiment/stages.py`), so evaluation, prediction on images and videos and the
exported artifact run exactly what training defined:

  crops at every c_i --SkeletonMapNet--> fg/bg maps [H, b, s, s, 6]
  maps --PoseRegressor_i--> hypotheses [b, H, 16, 3] (mm, root-relative)
  crop at c = 1 --Stacked Hourglass--> 2D detections [b, 16, 2] + confidences
  (and, for the baselines: Direct RGB, Ensemble, GT Ske from rendered maps)
"""

from __future__ import annotations

from typing import Any

from absl import logging
import chex
import jax
import jax.numpy as jnp
import ml_collections

from deepskeleton_jax import errors
from deepskeleton_jax.inference import render_compare
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.models import hypotheses

PIPELINE_STAGES = ('skeleton_net', 'regressor', 'direct_rgb', 'ensemble', 'hourglass')


def load_stages(config: ml_collections.ConfigDict, workdir: str,
                names: tuple[str, ...] = PIPELINE_STAGES,
                required: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
  """Stage objects and trained variables of those stages that have checkpoints.

  Args:
    config: finalised config.
    workdir: the experiment directory.
    names: stages to look for.
    required: stages without which the caller cannot work.

  Returns:
    {name: {'stage': Stage, 'variables', 'norm', 'step'}} for the stages found,
    each from its newest checkpoint step that reads completely.

  Raises:
    errors.CheckpointNotFoundError: a required stage has no checkpoint.
    errors.ConfigError: a stage was trained with settings `config` contradicts
      (`checkpointing.check_trained_with`, before anything is loaded; or, for
      a workdir without the record, variables of other shapes).
    errors.InputError: no checkpoint step of a stage reads.
  """
  for name in names:
    checkpointing.check_trained_with(config, workdir, name)
  out = {}
  for name in names:
    try:
      loaded = checkpointing.load_variables(workdir, name)
    except errors.CheckpointNotFoundError as e:
      if name in required:
        raise
      logging.info('%s', e)
      continue
    stage = stages_lib.build(config, name)
    expected = jax.eval_shape(lambda s=stage: hypotheses.init_stacked(
        s.model, jax.random.PRNGKey(0), s.num_hyps, s.dummy_input, train=False))
    checkpointing.check_shapes(name, f'step {loaded["step"]} in '
                               f'{checkpointing.checkpoint_dir(workdir, name)}',
                               loaded['variables'], expected)
    out[name] = {'stage': stage, **loaded}
  return out


def make_predict_fn(config: ml_collections.ConfigDict, loaded: dict[str, Any],
                    with_labels: bool = True):
  """Returns a jittable `fn(variables_by_stage, norms_by_stage, batch) -> outputs`.

  Args:
    config: finalised config.
    loaded: from `load_stages` (only the stage objects are used).
    with_labels: the batch has labels; adds the GT Ske outputs (regressors on
      maps rendered from the labels). Off for a user's images.

  Returns:
    The function. Its outputs (leading batch axis b unless noted): `maps`
    [H, b, s, s, 6] predicted fg/bg; `hyps` [b, H, 16, 3] from predicted maps;
    `gt_hyps` [b, H, 16, 3] from rendered maps; `direct` [b, 16, 3];
    `ensemble` [b, n, 16, 3]; `detections` [b, 16, 2] (input pixels of the
    c = 1 crop) and `detection_conf` [b, 16]; each present when its stages are.
  """
  lay = stages_lib.layout(config)
  stage = {name: v['stage'] for name, v in loaded.items()}

  def poses(name, variables, norms, source):
    """[b, H, 16, 3] poses (mm) of a pose stage."""
    return jnp.moveaxis(stage[name].infer(variables[name], source, norms[name]), 0, 1)

  def fn(variables, norms, batch):
    out = {}
    if 'skeleton_net' in variables:
      out['maps'] = stage['skeleton_net'].infer(variables['skeleton_net'], batch)
    gt_maps = stages_lib.render_maps(batch, lay) if with_labels else None
    if 'regressor' in variables:
      if 'maps' in out:
        out['hyps'] = poses('regressor', variables, norms, out['maps'])
      if with_labels:
        out['gt_hyps'] = poses('regressor', variables, norms, gt_maps)
    maps = out['maps'] if 'maps' in out else gt_maps
    if 'ensemble' in variables and maps is not None:
      out['ensemble'] = poses('ensemble', variables, norms, maps[lay.base:lay.base + 1])
    if 'direct_rgb' in variables:
      out['direct'] = poses('direct_rgb', variables, norms, batch)[:, 0]
    if 'hourglass' in variables:
      joints, conf = stage['hourglass'].infer(variables['hourglass'], batch)
      out['detections'], out['detection_conf'] = joints[0], conf[0]
    return out

  return fn


def make_pipeline_fn(config: ml_collections.ConfigDict, loaded: dict[str, Any],
                     with_maps: bool = True):
  """Returns a jittable `fn(variables, norms, images) -> outputs` for unlabelled crops.

  The whole test-time pipeline of the paper, matching included: the
  hypotheses are matched against the hourglass' 2D detections (scaled
  orthographic, each joint weighted by its detection confidence: a user's
  image has no known camera) by `config.matching.method` and the chosen one
  refined by `config.refine` (`render_compare.py`; the paper's reprojection
  matching and no refinement by default). Without a hourglass the base
  hypothesis is chosen, unrefined, and its 2D is its own projection, centred
  in the c = 1 crop. `--mode=predict` (images and videos) and
  `--mode=export` run this function.

  Args:
    config: finalised config.
    loaded: from `load_stages`, with 'skeleton_net' and 'regressor' (and
      optionally 'hourglass'); only the stage objects are used.
    with_maps: also return the skeleton maps (drop them to save transfers).

  Returns:
    The function. `images` is uint8 [b, C, S, S, 3], the crops at every
    `data.crop_scales`. Outputs: `pose` [b, 16, 3] (mm, root-relative, the
    chosen hypothesis, refined when `refine.steps` > 0), `chosen` [b] int32, `hyps` [b, H, 16, 3],
    `joints_2d` [b, 16, 2] (pixels of the c = 1 crop), `confidence` [b, 16],
    and with `with_maps` `maps` [b, H, s, s, 6] (fg RGB, bg RGB in [0, 1]).
  """
  for name in ('skeleton_net', 'regressor'):
    if name not in loaded:
      raise ValueError(f'make_pipeline_fn needs the {name!r} stage, got {sorted(loaded)}')
  stages = {k: v for k, v in loaded.items() if k in ('skeleton_net', 'regressor', 'hourglass')}
  predict_fn = make_predict_fn(config, stages, with_labels=False)
  lay = stages_lib.layout(config)
  num_scales = len(config.data.crop_scales)
  geom = render_compare.geometry(lay)
  settings = render_compare.settings(config)

  def fn(variables, norms, images):
    chex.assert_shape(images, (None, num_scales, lay.input_size, lay.input_size, 3))
    out = predict_fn(variables, norms, {'image': images})
    hyps = out['hyps']
    if 'detections' in out:
      joints, conf = out['detections'], out['detection_conf']
      picked = render_compare.choose_and_refine(
          hyps, jnp.moveaxis(out['maps'], 0, 1), joints, jnp.clip(conf, 0.0, None), None,
          geom, settings)
      chosen, pose = picked['chosen'], picked['pose']
    else:
      chosen = jnp.full(hyps.shape[:1], lay.base, jnp.int32)
      pose = hyps[:, lay.base]
      proj = pose[..., :2] - jnp.mean(pose[..., :2], axis=1, keepdims=True)
      extent = jnp.maximum(jnp.max(jnp.abs(proj), axis=(1, 2), keepdims=True), 1e-6)
      joints = proj * (0.35 * lay.input_size / extent) + lay.input_size / 2
      conf = jnp.ones(joints.shape[:2], jnp.float32)
    result = {'pose': pose, 'chosen': chosen, 'hyps': hyps, 'joints_2d': joints,
              'confidence': conf}
    if with_maps:
      result['maps'] = jnp.moveaxis(out['maps'], 0, 1)
    return result

  return fn
