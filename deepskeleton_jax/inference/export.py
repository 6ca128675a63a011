"""`--mode=export`: the whole inference function as one artifact, `jax.export` or ONNX.

  python run.py --mode=export --config=configs/demo.py --workdir=workdir/demo
  python run.py --mode=export --config=configs/demo.py --workdir=workdir/demo \\
      --config.export.format=onnx

writes `WORKDIR/export/` (or `config.export.output_dir`):

- `model.jax` (`config.export.format='jax'`, the default):
  `jax.export.Exported.serialize()` of `pipeline.make_pipeline_fn`
  (crops at every crop scale -> skeleton maps of every hypothesis ->
  regressors -> hourglass 2D detections -> matching (`config.matching`) ->
  the chosen 3D pose, refined when `config.refine.steps` > 0)
  with the trained variables baked in as constants, a symbolic batch
  dimension `b`, lowered for every platform in `config.export.platforms`
  (default cpu and cuda: lowering needs no GPU, so a CPU machine exports for
  both). StableHLO with jax.export's compatibility guarantees: a later jax
  deserializes and runs it.
- `model.onnx` (`config.export.format='onnx'`): the same function, matching
  included, as an ONNX graph (opset `onnx_convert.OPSET`, batch dimension
  `b`), written by this project's jaxpr -> ONNX converter
  (`onnx_convert.py`, needs the optional `onnx` package) from the traced
  function with the hypotheses unrolled (`hyp_map='loop'`). Weights over
  `onnx_convert.INLINE_BYTES` (1 GiB; a protobuf message stops at 2 GiB) go to
  `model.onnx.data` beside it (ONNX external data: keep the two together).
- `model.json`: the inputs and outputs in call order (`name`, `shape` with
  "b" for the batch dimension, `dtype`), and the preprocessing a caller must
  reproduce (crop size and scales, pixel convention, the normalisation the
  artifact applies itself); `format` and `file` name the artifact, and
  `artifact` records its size in bytes and SHA-256, which the loaders
  (`examples/serve_exported.py`, `examples/serve_onnx.py`) check first.

Serving needs only `jax` and `numpy` (see `examples/serve_exported.py`):

  exported = jax.export.deserialize(open('model.jax', 'rb').read())
  pose, chosen, hyps, joints_2d, confidence, maps = exported.call(crops)

or only `onnxruntime` and `numpy` (see `examples/serve_onnx.py`):

  session = onnxruntime.InferenceSession('model.onnx')
  pose, chosen, hyps, joints_2d, confidence, maps = session.run(None, {'crops': crops})
"""

from __future__ import annotations

import dataclasses
import hashlib
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
FORMATS = ('jax', 'onnx')  # config.export.format
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


def _check_format(config: ml_collections.ConfigDict) -> str:
  fmt = config.export.format
  if fmt not in FORMATS:
    raise errors.ConfigError(f'config.export.format={fmt!r} is invalid: expected one of '
                             f"{FORMATS} ('jax': model.jax for jax.export, 'onnx': model.onnx "
                             'for ONNX Runtime)')
  return fmt


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


def describe(config: ml_collections.ConfigDict, in_avals, out_avals,
             steps: dict[str, int], artifact: dict[str, Any]) -> dict[str, Any]:
  """The `model.json` record of an exported pipeline.

  Args:
    config: finalised config.
    in_avals: the artifact's input (abstract values, batch dimension `b`).
    out_avals: its outputs, in `OUTPUTS` order.
    steps: the training step of each exported stage.
    artifact: format-specific entries (`format`, `file`, ...), merged in.

  Returns:
    The record.
  """
  lay = stages_lib.layout(config)
  scales = [float(c) for c in config.data.crop_scales]
  return {
      **artifact,
      'inputs': [_describe(in_avals[0], 'crops', 'uint8 RGB person crops, one '
                           'per crop scale (preprocessing.crop_scales), each of side '
                           'crop_size pixels')],
      'outputs': [_describe(a, n, d) for a, (n, d) in zip(out_avals, OUTPUTS)],
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
      'matching': _matching_text(config) + ' (inside the artifact)',
      'stages': steps,
      'jax_version': jax.__version__,
  }


def _to_jax(config: ml_collections.ConfigDict, loaded: dict[str, Any]):
  """({file name: bytes}, input avals, output avals, model.json entries)."""
  platforms = _check_platforms(config.export.platforms)
  exported = jax.export.export(jax.jit(serving_fn(config, loaded)),
                               platforms=platforms)(input_spec(config))
  try:
    data = exported.serialize()
  except ImportError as e:  # jax imports flatbuffers only to serialize
    raise errors.UserError(f'--mode=export cannot serialize the artifact ({e}): '
                           'pip install flatbuffers (see requirements.txt)') from None
  return ({'model.jax': bytes(data)}, exported.in_avals, exported.out_avals,
          {'format': 'jax', 'file': 'model.jax', 'platforms': list(exported.platforms)})


def _to_onnx(config: ml_collections.ConfigDict, loaded: dict[str, Any]):
  """({file name: bytes}, input avals, output avals, model.json entries)."""
  try:
    import onnx  # pylint: disable=g-import-not-at-top
    from deepskeleton_jax.inference import onnx_convert  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.ConfigError(
        f"config.export.format='onnx' needs the onnx package ({e}): pip install "
        "-r requirements-onnx.txt, or use config.export.format='jax'") from None
  # Unrolled hypotheses: ordinary convolutions (vmap batches them into grouped
  # ones with the hypothesis axis folded in, which ONNX spells worse).
  unrolled = {k: {**v, 'stage': dataclasses.replace(v['stage'], hyp_map='loop')}
              for k, v in loaded.items()}
  closed = jax.make_jaxpr(serving_fn(config, unrolled))(input_spec(config))
  try:
    model = onnx_convert.convert(closed, ['crops'], [name for name, _ in OUTPUTS],
                                 doc='DeepSkeleton-JAX pipeline: see model.json')
  except onnx_convert.UnsupportedError as e:
    raise errors.ConfigError(
        f"config.export.format='onnx' cannot convert this pipeline: {e}; the ONNX "
        f"converter supports the lax primitives {', '.join(onnx_convert.PRIMITIVES)}; "
        f"config.export.format='jax' exports any pipeline (formats: {FORMATS})") from None
  data = onnx_convert.serialize(model, 'model.onnx')  # large: + model.onnx.data
  if len(data) == 1:  # the checker would look for model.onnx.data in the cwd
    onnx.checker.check_model(model)
  return (data, closed.in_avals, closed.out_avals,
          {'format': 'onnx', 'file': 'model.onnx', 'opset': onnx_convert.OPSET,
           'onnx_version': onnx.__version__, 'files': sorted(data)})


def write(config: ml_collections.ConfigDict, loaded: dict[str, Any],
          out_dir: str) -> dict[str, str]:
  """Writes the artifact of `config.export.format` and model.json into `out_dir`.

  Args:
    config: finalised config.
    loaded: `pipeline.load_stages` output (skeleton_net and regressor,
      optionally hourglass; a `step` per stage, else -1 is recorded).
    out_dir: created if missing.

  Returns:
    {'model': path of model.jax or model.onnx, 'spec': path of model.json}.
  """
  fmt = _check_format(config)
  data, in_avals, out_avals, artifact = (_to_jax if fmt == 'jax' else _to_onnx)(config, loaded)
  spec = describe(config, in_avals, out_avals,
                  {k: int(v.get('step', -1)) for k, v in loaded.items()}, artifact)
  paths = write_artifact(out_dir, data, spec, artifact['file'])
  logging.info('export: %s (%.1f MB, %s) and %s', paths['model'],
               sum(map(len, data.values())) / 1e6,
               ', '.join(f'{k} {v}' for k, v in artifact.items() if k not in ('file',)),
               paths['spec'])
  return paths


def write_artifact(out_dir: str, data: bytes | dict[str, bytes], spec: dict[str, Any],
                   main: str = 'model.jax') -> dict[str, str]:
  """Writes the artifact's files and then `model.json`, recording the main file's size and SHA-256.

  Each file is written atomically, model.json last: a kill in between leaves a
  model.json whose record the new file does not match, which the loader refuses.

  Args:
    out_dir: the folder (created if needed).
    data: the main file's bytes, or {file name: bytes} (a data file first).
    spec: the `describe` record; gets an 'artifact' entry.
    main: the main file's name.

  Returns:
    {'model': path of the main file, 'spec': path of model.json}.
  """
  data = data if isinstance(data, dict) else {main: data}
  os.makedirs(out_dir, exist_ok=True)
  paths = {'model': os.path.join(out_dir, main), 'spec': os.path.join(out_dir, 'model.json')}
  spec['artifact'] = {'file': main, 'bytes': len(data[main]),
                      'sha256': hashlib.sha256(data[main]).hexdigest()}
  for name, content in data.items():  # a model's data file before the model
    files.write_bytes(os.path.join(out_dir, name), content)
  files.write_text(paths['spec'], json.dumps(spec, indent=1))
  return paths


def export(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Exports the trained pipeline of `workdir` (see the module docstring).

  Args:
    config: finalised config.
    workdir: the experiment directory (skeleton_net and regressor
      checkpoints required; hourglass optional: without it the base
      hypothesis is chosen).

  Returns:
    {'model': path of model.jax or model.onnx, 'spec': path of model.json}.
  """
  if _check_format(config) == 'jax':  # before the slow load
    _check_platforms(config.export.platforms)
  loaded = pipeline.load_stages(config, workdir, ('skeleton_net', 'regressor', 'hourglass'),
                                 required=('skeleton_net', 'regressor'))
  return write(config, loaded, config.export.output_dir or os.path.join(workdir, 'export'))
