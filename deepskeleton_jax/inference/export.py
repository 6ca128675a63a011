"""`--mode=export`: the whole inference function as one `jax.export` artifact.

  python run.py --mode=export --config=configs/demo.py --workdir=workdir/demo

writes `WORKDIR/export/` (or `config.export.output_dir`):

- `model.jax`: `jax.export.Exported.serialize()` of `pipeline.make_pipeline_fn`
  (crops at every crop scale -> skeleton maps of every hypothesis ->
  regressors -> hourglass 2D detections -> matching (`config.matching`) ->
  the chosen 3D pose, refined when `config.refine.steps` > 0)
  with the trained variables baked in as constants, a symbolic batch
  dimension `b`, lowered for every platform in `config.export.platforms`
  (default cpu and cuda: lowering needs no GPU, so a CPU machine exports for
  both). StableHLO with jax.export's compatibility guarantees: a later jax
  deserializes and runs it.
- `model.json`: the inputs and outputs in call order (`name`, `shape` with
  "b" for the batch dimension, `dtype`), and the preprocessing a caller must
  reproduce (crop size and scales, pixel convention, the normalisation the
  artifact applies itself).

Serving needs only `jax` and `numpy` (see `examples/serve_exported.py`):

  exported = jax.export.deserialize(open('model.jax', 'rb').read())
  pose, chosen, hyps, joints_2d, confidence, maps = exported.call(crops)
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.inference import pipeline
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.experiment import stages as stages_lib

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
# Outputs of the artifact, in call order, with their descriptions.
OUTPUTS = (
    ('pose', 'chosen 3D pose, mm, camera frame, root-relative (thorax)'),
    ('chosen', 'index of the chosen hypothesis'),
    ('hyps', 'every 3D hypothesis, mm, root-relative'),
    ('joints_2d', '2D detections (x, y) in pixels of the c = 1 crop'),
    ('confidence', 'detection confidence per joint (heatmap maximum)'),
    ('maps', 'skeleton maps per hypothesis: fg RGB, bg RGB in [0, 1]'),
)


def _check_platforms(platforms) -> tuple[str, ...]:
  platforms = tuple(str(p).strip().lower() for p in platforms)
  if not platforms or any(p not in PLATFORMS for p in platforms):
    raise errors.ConfigError(f'config.export.platforms={platforms!r} is invalid: expected '
                             f'a non-empty subset of {PLATFORMS}')
  return platforms


def serving_fn(config: ml_collections.ConfigDict, loaded: dict[str, Any]):
  """`crops [b, C, S, S, 3] uint8 -> tuple of OUTPUTS` with the variables as constants.

  Args:
    config: finalised config.
    loaded: `pipeline.load_stages` output with skeleton_net and regressor.

  Returns:
    The function (not jitted).
  """
  fn = pipeline.make_pipeline_fn(config, loaded, with_maps=True)
  variables = {k: v['variables'] for k, v in loaded.items()}
  norms = {k: v['norm'] for k, v in loaded.items()}

  def serve(crops):
    # The barrier keeps XLA from folding the constant variables into the
    # computation (e.g. batch norm into convolution weights), so that the
    # artifact computes what `--mode=predict` (variables as arguments) does,
    # to float rounding.
    out = fn(*jax.lax.optimization_barrier((variables, norms)), crops)
    return tuple(out[name] for name, _ in OUTPUTS)

  return serve


def input_spec(config: ml_collections.ConfigDict) -> jax.ShapeDtypeStruct:
  """The crops' abstract value, [b, C, S, S, 3] uint8 with a symbolic b."""
  b, = jax.export.symbolic_shape('b')
  size = int(config.data.input_size)
  return jax.ShapeDtypeStruct((b, len(config.data.crop_scales), size, size, 3), jnp.uint8)


def _describe(aval: Any, name: str, doc: str) -> dict[str, Any]:
  shape = [d if isinstance(d, int) else str(d) for d in aval.shape]
  return {'name': name, 'shape': shape, 'dtype': str(np.dtype(aval.dtype)), 'description': doc}


def _matching_text(config: ml_collections.ConfigDict) -> str:
  """How the artifact picks and refines its pose (`config.matching`, `config.refine`)."""
  method = {'reprojection': 'scaled orthographic reprojection error, joints weighted by '
                            'confidence',
            'maps': 'cross-entropy of each hypothesis\' rendered skeleton maps against the '
                    'predicted ones (camera: scaled orthographic fit to the detections)',
            'both': 'reprojection error (crop sides squared) + '
                    f'{config.matching.maps_weight:g} x map cross-entropy'}[config.matching.method]
  steps = int(config.refine.steps)
  if steps:
    method += f'; then {steps} render-and-compare refinement steps (see render_compare.py)'
  return method


def describe(config: ml_collections.ConfigDict, exported: jax.export.Exported,
             steps: dict[str, int]) -> dict[str, Any]:
  """The `model.json` record of an exported pipeline."""
  lay = stages_lib.layout(config)
  scales = [float(c) for c in config.data.crop_scales]
  return {
      'inputs': [_describe(exported.in_avals[0], 'crops', 'uint8 RGB person crops, one '
                           'per crop scale (preprocessing.crop_scales), each of side '
                           'crop_size pixels')],
      'outputs': [_describe(a, n, d) for a, (n, d) in zip(exported.out_avals, OUTPUTS)],
      'preprocessing': {
          'crop_size': lay.input_size,
          'crop_scales': scales,
          'unit_crop_index': scales.index(1.0),
          'crop': 'for a person box (x0, y0, x1, y1) in image pixels: centre = box centre, '
                  'side = max(x1 - x0, y1 - y0); crop i covers the square of side '
                  'crop_scales[i] * side around the centre, resampled (bilinear) to '
                  'crop_size x crop_size, zero outside the image',
          'pixel_convention': 'continuous: pixel (row i, col j) covers [j, j+1) x [i, i+1), '
                              'its centre is (j + 0.5, i + 0.5); joints_2d are in pixels of '
                              'the c = 1 crop: image = crop * (side / crop_size) + '
                              '(centre - side / 2)',
          'normalization': {
              'applied': 'inside the artifact: x = (crops / 255 - mean) / std',
              'mean': stages_lib.IMAGENET_MEAN.tolist(),
              'std': stages_lib.IMAGENET_STD.tolist()},
          'channel_order': 'RGB',
      },
      'hypotheses': [list(h) for h in lay.hypotheses],
      'joint_names': list(skeleton.JOINT_NAMES),
      'matching': _matching_text(config),
      'platforms': list(exported.platforms),
      'stages': steps,
      'jax_version': jax.__version__,
  }


def export(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Exports the trained pipeline of `workdir` (see the module docstring).

  Args:
    config: finalised config.
    workdir: the experiment directory (skeleton_net and regressor
      checkpoints required; hourglass optional: without it the base
      hypothesis is chosen).

  Returns:
    {'model': path of model.jax, 'spec': path of model.json}.
  """
  platforms = _check_platforms(config.export.platforms)
  loaded = pipeline.load_stages(config, workdir, ('skeleton_net', 'regressor', 'hourglass'),
                                 required=('skeleton_net', 'regressor'))
  exported = jax.export.export(jax.jit(serving_fn(config, loaded)),
                               platforms=platforms)(input_spec(config))
  try:
    data = exported.serialize()
  except ImportError as e:  # jax imports flatbuffers only to serialize
    raise errors.UserError(f'--mode=export cannot serialize the artifact ({e}): '
                           'pip install flatbuffers (see requirements.txt)') from None
  out_dir = config.export.output_dir or os.path.join(workdir, 'export')
  os.makedirs(out_dir, exist_ok=True)
  paths = {'model': os.path.join(out_dir, 'model.jax'),
           'spec': os.path.join(out_dir, 'model.json')}
  spec = describe(config, exported, {k: v['step'] for k, v in loaded.items()})
  files.write_bytes(paths['model'], bytes(data))
  files.write_text(paths['spec'], json.dumps(spec, indent=1))
  logging.info('export: %s (%.1f MB, platforms %s, stages %s) and %s', paths['model'],
               len(data) / 1e6, ', '.join(platforms), spec['stages'], paths['spec'])
  return paths
