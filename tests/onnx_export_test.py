"""Tests of `--config.export.format=onnx` (inference/onnx_convert.py, onnx_ops.py, export.py).

Each converter rule is checked against XLA (ONNX Runtime's outputs of the
converted jaxpr against `jax.jit` of the function, with a symbolic batch
run at two sizes); the whole tiny pipeline, randomly initialised (no
training), is exported both ways and ONNX Runtime, run by
examples/serve_onnx.py in a fresh `python -I` process that imports neither
jax, flax nor this project, must give model.jax's outputs. The tests that
need onnx/onnxruntime skip without them (pip install -r requirements-onnx.txt).
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.benchmarks import onnx_benchmark
from configs import tiny
from deepskeleton_jax import errors
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.inference import export

REPO = pathlib.Path(__file__).resolve().parents[1]
_HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ('onnx', 'onnxruntime'))
needs_onnx = pytest.mark.skipif(not _HAVE_ONNX, reason='needs the onnx extra: pip install '
                                '-r requirements-onnx.txt')

_ONNX_CHECK = '''
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location('serve_onnx', sys.argv[1])
serve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve)
fn, _ = serve.load(sys.argv[2])
np.savez('onnx_out.npz', **fn(np.load('crops.npy')))
print(json.dumps(sorted(m for m in ('jax', 'flax', 'deepskeleton_jax', 'configs')
                        if any(k == m or k.startswith(m + '.') for k in sys.modules))))
'''


def _run_converted(fn, specs, inputs):
  """ONNX Runtime's outputs of `fn` converted at `specs`, on `inputs`."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  from deepskeleton_jax.inference import onnx_convert  # pylint: disable=g-import-not-at-top
  closed = jax.make_jaxpr(fn)(*specs)
  names = [f'in{i}' for i in range(len(specs))]
  model = onnx_convert.convert(closed, names, [f'out{i}' for i in range(len(closed.out_avals))])
  session = onnxruntime.InferenceSession(model.SerializeToString(),
                                         providers=['CPUExecutionProvider'])
  return session.run(None, dict(zip(names, inputs)))


def _batch_spec(*shape, dtype=jnp.float32):
  b, = jax.export.symbolic_shape('b')
  return jax.ShapeDtypeStruct((b, *shape), dtype)


def _conv(x, w, **kw):
  return lax.conv_general_dilated(x, w, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), **kw)


# (function of a [b, 9, 7, 4] float input, name)
_CASES = [
    (lambda x: _conv(x, jnp.linspace(-1, 1, 3 * 3 * 4 * 5).reshape(3, 3, 4, 5),
                     window_strides=(2, 1), padding=((1, 2), (0, 1)), rhs_dilation=(1, 2)),
     'conv strided dilated padded'),
    (lambda x: _conv(x, jnp.linspace(-1, 1, 2 * 2 * 2 * 6).reshape(2, 2, 2, 6),
                     window_strides=(1, 1), padding=((-1, 0), (1, -2)),
                     feature_group_count=2), 'conv grouped, negative padding'),
    (lambda x: lax.conv_transpose(x, jnp.linspace(-1, 1, 4 * 3 * 4 * 3).reshape(4, 3, 4, 3),
                                  (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
     'conv transpose SAME'),
    (lambda x: lax.conv_transpose(x, jnp.linspace(-1, 1, 3 * 3 * 4 * 2).reshape(3, 3, 4, 2),
                                  (3, 2), ((0, 4), (3, -1)), rhs_dilation=(1, 2),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
     'conv transpose explicit padding, rhs dilation'),
    (lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0))), 'max pool padded'),
    (lambda x: lax.reduce_window(x, 0.0, lax.add, (1, 3, 1, 2), (1, 1, 1, 1), 'SAME'),
     'window sum SAME over h and channels'),
    (lambda x: jnp.einsum('bhwc,cd->bhwd', x, jnp.ones((4, 3))) + jnp.einsum(
        'bhwc,bhvc->bhwv', x, x)[..., :3], 'dot_general dense and batched'),
    (lambda x: jnp.take_along_axis(x, jnp.argmax(x, axis=2, keepdims=True), axis=2),
     'take_along_axis (argmax)'),
    (lambda x: (x[:, 3], x[:, jnp.array([0, 8, 2])], x[..., 1:3:1, ::2, 2], x[:, 1:3, ::2],
                x[:, jnp.array([[1, 2], [0, -1]]), 1:5]),
     'indexing: int, index array, strided slices'),
    (lambda x: (jnp.take_along_axis(x, jnp.argmax(x, axis=1, keepdims=True), axis=1),
                jnp.take_along_axis(x, jnp.full(x.shape[:2] + (1, 4), 2), axis=2),
                jnp.arange(x.shape[0])[:, None] * x[:, 0, 0]),
     'take_along_axis on inner axes, iota over b'),
    (lambda x: x.reshape(-1, 4).sum(0) + x.reshape(x.shape[0], -1)[:, :4].mean(0),
     'reshape through multiples of b'),
    (lambda x: (jnp.argmin(jnp.round(x * 2) / 2, axis=1), lax.rem(x * 7, 3.0),
                jnp.where(x > 0, x ** 2, jnp.exp(x)), jnp.clip(x, -0.5, 0.5)),
     'argmin ties, rem, select, pow, clip'),
    (lambda x: (jnp.cumsum(x, axis=1), jnp.flip(x, 2),
                lax.pad(x, 0.5, ((0, 0, 0), (1, -2, 0), (0, 0, 0), (2, 0, 0))),
                jnp.stack(jnp.split(x, 2, axis=3), 1), *jnp.unstack(x[:, :2], axis=1),
                jnp.broadcast_to(x[:, :1, :1, :1], x.shape)),
     'cumsum, flip, pad, split, stack, unstack, broadcast'),
    (lambda x: (jax.nn.softmax(x, axis=-1), jax.nn.relu(x), jnp.round(x),
                (x > 0).astype(jnp.int32) ^ 1, jnp.arange(7.0) * x[:, 0, :, 0]),
     'softmax, relu, round, int xor, iota'),
    (lambda x: lax.fori_loop(0, 5, lambda i, c: (c[0] * 0.9 + jnp.tanh(c[1]) * i, c[1] - 0.1),
                             (x, x[:, :1]))[0],
     'fori_loop (refinement steps): unrolled'),
    (lambda x: (lax.map(lambda r: jnp.sum(r, axis=-1) * 2.0 + r[:, 0, :1], jnp.moveaxis(x, 1, 0)),
                lax.scan(lambda c, r: (c + r, c * r), x[:, 0], jnp.moveaxis(x, 1, 0),
                         reverse=True)),
     'lax.map and scan over arrays, reversed: unrolled'),
]


@needs_onnx
@pytest.mark.parametrize('fn,name', _CASES, ids=[name for _, name in _CASES])
def test_converted_primitives_match_xla(fn, name):
  del name
  rng = np.random.default_rng(0)
  for batch in (3, 1):
    x = rng.normal(size=(batch, 9, 7, 4)).astype(np.float32)
    got = _run_converted(fn, [_batch_spec(9, 7, 4)], [x])
    want = jax.tree.leaves(jax.jit(fn)(x))
    assert len(got) == len(want)
    for g, w in zip(got, want):
      assert g.shape == w.shape and g.dtype == w.dtype
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@needs_onnx
def test_gather_out_of_bounds_fills_as_lax():
  def fn(x, i):
    return (x.at[:, i].get(mode='fill', fill_value=-7.0), x.at[:, i].get(mode='clip'),
            jnp.take_along_axis(x, jnp.broadcast_to(i, x.shape[:1] + i.shape), axis=1,
                                mode='fill', fill_value=np.nan))
  x = np.arange(12, dtype=np.float32).reshape(2, 6)
  i = np.array([-1, 0, 5, 6, 9], np.int32)
  got = _run_converted(fn, [_batch_spec(6), jax.ShapeDtypeStruct((5,), jnp.int32)], [x, i])
  for g, w in zip(got, jax.jit(fn)(x, i)):
    np.testing.assert_array_equal(g, w)


@needs_onnx
def test_scatter_add_accumulates_repeats_and_drops_out_of_bounds_as_lax():
  """The gradient of a gather with repeated indices (refinement's bones), and .at[].add."""
  parents = jnp.array([0, 0, 1, 2, 0, 4])
  def fn(x, i, u):
    bones = lambda j: jnp.sum(jnp.tanh(j[:, 1:] - j[:, parents[1:]]) ** 2)
    return (jax.grad(bones)(x), x.at[:, i].add(u, mode='drop'),
            jnp.zeros((6, 2)).at[i].add(u[:, :2], mode='clip'))
  x = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)
  i = np.array([-1, 2, 2, 6, 5], np.int32)
  u = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  got = _run_converted(fn, [_batch_spec(6, 3), jax.ShapeDtypeStruct((5,), jnp.int32),
                            jax.ShapeDtypeStruct((5, 3), jnp.float32)], [x, i, u])
  for g, w in zip(got, jax.jit(fn)(x, i, u)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@needs_onnx
def test_unconvertible_primitive_is_named():
  from deepskeleton_jax.inference import onnx_convert  # pylint: disable=g-import-not-at-top
  closed = jax.make_jaxpr(lambda x: jnp.sort(x, axis=1))(_batch_spec(5))
  with pytest.raises(onnx_convert.UnsupportedError, match='^sort: no ONNX rule'):
    onnx_convert.convert(closed, ['x'], ['y'])


def _tiny_config(fmt, loss='mse', refine=None):
  config = tiny.get_config()
  config.hourglass.loss = loss
  config.refine.update(refine or {})
  config.export.update(format=fmt, platforms=('cpu',))
  return config_lib.finalize(config)


@pytest.fixture(scope='module')
def random_tiny_stages():
  """The tiny pipeline's stages with random variables (no training)."""
  return onnx_benchmark.random_stages(_tiny_config('jax'), seed=1)


# Refinement on bone directions with the maps term: Adam steps through the soft
# rasterizer, unrolled, whose gradients hold scatter-adds.
_REFINE = {'steps': 3, 'variables': 'bones', 'maps_weight': 1.0}


@needs_onnx
@pytest.mark.parametrize('loss,refine', [('mse', None), ('integral', None), ('mse', _REFINE)],
                         ids=['mse', 'integral', 'refine'])
def test_onnx_runtime_gives_the_jax_artifacts_outputs(loss, refine, random_tiny_stages,
                                                      tmp_path):
  """Same crops through model.jax (here) and model.onnx (fresh process, no jax)."""
  config = _tiny_config('jax', loss, refine)  # the hourglass' decoding follows its loss
  loaded = {k: {**v, 'stage': stages_lib.build(config, k)} for k, v in random_tiny_stages.items()}
  paths = {fmt: export.write(_tiny_config(fmt, loss, refine), loaded, str(tmp_path / fmt))
           for fmt in ('jax', 'onnx')}
  specs = {fmt: json.loads(pathlib.Path(p['spec']).read_text()) for fmt, p in paths.items()}
  assert pathlib.Path(paths['onnx']['model']).name == 'model.onnx'
  assert specs['onnx']['format'] == 'onnx' and specs['jax']['format'] == 'jax'
  for key in ('inputs', 'outputs', 'preprocessing', 'hypotheses', 'joint_names'):
    assert specs['onnx'][key] == specs['jax'][key], key
  pre = specs['jax']['preprocessing']
  size, scales = pre['crop_size'], len(pre['crop_scales'])
  crops = np.random.default_rng(2).integers(0, 256, (5, scales, size, size, 3), dtype=np.uint8)
  np.save(tmp_path / 'crops.npy', crops)
  (tmp_path / 'check.py').write_text(_ONNX_CHECK)
  run = subprocess.run([sys.executable, '-I', 'check.py', str(REPO / 'examples' / 'serve_onnx.py'),
                        str(tmp_path / 'onnx')], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.loads(run.stdout.strip().splitlines()[-1]) == []  # no jax, flax, project
  got = np.load(tmp_path / 'onnx_out.npz')
  want = onnx_benchmark.load_example('serve_exported').load(str(tmp_path / 'jax'))[0](crops)
  assert sorted(got.files) == sorted(want) == sorted(o['name'] for o in specs['jax']['outputs'])
  for key, w in want.items():
    assert got[key].shape == w.shape and got[key].dtype == w.dtype, key
    np.testing.assert_allclose(got[key], w, atol=1e-3, rtol=0, err_msg=key)
  picked = got['hyps'][np.arange(5), got['chosen']]
  if refine is None:
    np.testing.assert_array_equal(got['pose'], picked)
  else:  # refinement moved the picked pose (the comparison above says it moved as in jax)
    assert np.abs(got['pose'] - picked).max() > 1.0


@needs_onnx
def test_large_models_keep_their_weights_in_a_data_file(random_tiny_stages, tmp_path,
                                                        monkeypatch):
  """Past onnx_convert.INLINE_BYTES (2 GiB protobuf limit) the weights go to model.onnx.data."""
  from deepskeleton_jax.inference import onnx_convert  # pylint: disable=g-import-not-at-top
  config = _tiny_config('onnx')
  inline = export.write(config, random_tiny_stages, str(tmp_path / 'inline'))
  monkeypatch.setattr(onnx_convert, 'INLINE_BYTES', 0)
  paths = export.write(config, random_tiny_stages, str(tmp_path / 'external'))
  assert sorted(p.name for p in (tmp_path / 'external').iterdir()) == [
      'model.json', 'model.onnx', 'model.onnx.data']
  assert json.loads(pathlib.Path(paths['spec']).read_text())['files'] == [
      'model.onnx', 'model.onnx.data']
  import onnx  # pylint: disable=g-import-not-at-top
  tensors = onnx.load(inline['model']).graph.initializer
  moved = sum(len(t.raw_data) for t in tensors if len(t.raw_data) >= 1024)
  assert (tmp_path / 'external' / 'model.onnx.data').stat().st_size == moved > 0
  inline_bytes = pathlib.Path(inline['model']).stat().st_size
  assert pathlib.Path(paths['model']).stat().st_size < inline_bytes - 0.9 * moved
  crops = np.random.default_rng(3).integers(0, 256, (2, 2, 32, 32, 3), dtype=np.uint8)
  serve = onnx_benchmark.load_example('serve_onnx')
  want = serve.load(str(tmp_path / 'inline'))[0](crops)
  got = serve.load(str(tmp_path / 'external'))[0](crops)
  for key, w in want.items():
    np.testing.assert_array_equal(got[key], w, err_msg=key)


@needs_onnx
def test_benchmark_times_both_runtimes_on_the_same_crops(random_tiny_stages):
  result = onnx_benchmark.run(_tiny_config('jax'), random_tiny_stages, [3, 1], repeats=2)
  assert [r['batch_size'] for r in result['rows']] == [3, 1] and not result['trained']
  for row in result['rows']:
    assert row['jax_images_per_s'] > 0 and row['onnx_images_per_s'] > 0
    assert max(row['max_abs_difference'].values()) < 1e-3
  assert '| 3 |' in onnx_benchmark.table(result)


def test_unknown_format_is_one_line_naming_the_key(tmp_path):
  config = _tiny_config('tflite')
  for call in (lambda: export.write(config, {}, str(tmp_path / 'out')),
               lambda: export.export(config, str(tmp_path / 'no_workdir'))):
    with pytest.raises(errors.ConfigError) as e:
      call()
    message = str(e.value)
    assert "config.export.format='tflite'" in message and "('jax', 'onnx')" in message
    assert '\n' not in message
  assert not (tmp_path / 'out').exists()


def test_without_the_onnx_package_the_error_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'onnx', None)  # import onnx raises ImportError
  with pytest.raises(errors.ConfigError, match="config.export.format='onnx' needs the onnx "
                     'package.*requirements-onnx.txt'):
    export.write(_tiny_config('onnx'), {}, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


@needs_onnx
def test_a_pipeline_part_that_cannot_convert_is_one_line(tmp_path, monkeypatch):
  def serving_fn(config, loaded):
    del config, loaded
    def serve(crops):
      x = crops.astype(jnp.float32)
      return (jnp.sort(x, axis=1),) + (x,) * (len(export.OUTPUTS) - 1)
    return serve
  monkeypatch.setattr(export, 'serving_fn', serving_fn)
  with pytest.raises(errors.ConfigError) as e:
    export.write(_tiny_config('onnx'), {}, str(tmp_path / 'out'))
  message = str(e.value)
  assert message.startswith("config.export.format='onnx' cannot convert this pipeline: sort")
  assert 'conv_general_dilated' in message and "config.export.format='jax'" in message
  assert '\n' not in message and not (tmp_path / 'out').exists()


@needs_onnx
def test_export_mode_writes_model_onnx_from_the_workdir(tiny_pipeline, tmp_path):
  """`run.py --mode=export --config.export.format=onnx` on trained checkpoints."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'export'
  run = subprocess.run(
      [sys.executable, str(REPO / 'run.py'), '--mode=export',
       '--config=' + str(REPO / 'configs' / 'tiny.py'), f'--workdir={tiny_pipeline.workdir}',
       f'--config.data.data_dir={tiny_pipeline.data_dir}', '--config.export.format=onnx',
       f'--config.export.output_dir={out}'],
      capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
  assert run.returncode == 0, run.stderr[-3000:]
  paths = {'spec': out / 'model.json', 'model': str(out / 'model.onnx')}
  assert sorted(p.name for p in out.iterdir()) == ['model.json', 'model.onnx']
  spec = json.loads(pathlib.Path(paths['spec']).read_text())
  assert spec['file'] == 'model.onnx' and set(spec['stages']) == {
      'skeleton_net', 'regressor', 'hourglass'}
  session = onnxruntime.InferenceSession(paths['model'], providers=['CPUExecutionProvider'])
  assert [i.name for i in session.get_inputs()] == ['crops']
  assert session.get_inputs()[0].shape[0] == 'b'
  assert [o.name for o in session.get_outputs()] == [o['name'] for o in spec['outputs']]
