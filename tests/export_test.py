"""Tests of `--mode=export` (inference/export.py) and the standalone loader.

The tiny pipeline (tests/conftest.py) is exported once per module; the
artifact is then run by examples/serve_exported.py in a fresh `python -I`
process whose sys.path holds neither the repository nor its package, and its
outputs are compared with `--mode=predict`'s Predictor on the same crops.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from deepskeleton_jax import errors
from deepskeleton_jax.inference import export
from deepskeleton_jax.inference import pipeline
from deepskeleton_jax.inference import predictor as predictor_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
LOADER = REPO / 'examples' / 'serve_exported.py'

_CHECK = '''
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location('serve_exported', sys.argv[1])
serve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve)
fn, _ = serve.load(sys.argv[2])
for name in sys.argv[3:]:
  np.savez(name + '_out.npz', **fn(np.load(name + '.npy')))
print(json.dumps({'modules': sorted(m for m in ('flax', 'deepskeleton_jax', 'configs')
                                    if any(k == m or k.startswith(m + '.') for k in sys.modules)),
                  'path': sys.path}))
'''


@pytest.fixture(scope='module')
def exported(tiny_pipeline, tmp_path_factory):
  out = tmp_path_factory.mktemp('export')
  config = tiny_pipeline.config()
  with config.unlocked():
    config.export.output_dir = str(out)
  paths = export.export(config, tiny_pipeline.workdir)
  return config, paths


def _load_loader():
  spec = importlib.util.spec_from_file_location('serve_exported', LOADER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _batch(clip, config, frames):
  return predictor_lib.make_batch([clip.frames[i] for i in frames], [clip.boxes[i] for i in frames],
                            tuple(config.data.crop_scales), config.data.input_size)


def test_artifact_runs_without_the_project(exported, tiny_pipeline, synthetic_clip, tmp_path):
  config, paths = exported
  predictor = predictor_lib.Predictor(config, tiny_pipeline.workdir)
  batches = {'three': _batch(synthetic_clip, config, [0, 10, 20]),
             'one': _batch(synthetic_clip, config, [29])}
  for name, batch in batches.items():
    np.save(tmp_path / f'{name}.npy', batch['image'])
  (tmp_path / 'check.py').write_text(_CHECK)
  run = subprocess.run(
      [sys.executable, '-I', 'check.py', str(LOADER), str(pathlib.Path(paths['model']).parent)]
      + list(batches), cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(run.stdout.strip().splitlines()[-1])
  assert report['modules'] == [], report
  assert not any(str(REPO) == p or p.startswith(str(REPO) + '/') for p in report['path'])
  names = [o['name'] for o in json.loads(pathlib.Path(paths['spec']).read_text())['outputs']]
  for name, batch in batches.items():
    want = predictor(batch)
    want['joints_2d'] = want['joints_crop']  # the artifact's 2D: c = 1 crop pixels
    got = np.load(tmp_path / f'{name}_out.npz')
    assert sorted(got.files) == sorted(names)
    for key in names:
      assert got[key].shape == want[key].shape and got[key].dtype == want[key].dtype, key
      np.testing.assert_allclose(got[key], want[key], atol=1e-4, rtol=0, err_msg=key)


def _orthographic_choice(hyps, joints, conf):
  """argmin over hypotheses of the confidence-weighted scaled-orthographic error, in numpy."""
  w = np.clip(conf, 0, None)[:, None]
  errs = []
  for hyp in hyps:
    a = hyp[:, :2] - (w * hyp[:, :2]).sum(0) / w.sum()
    b = joints - (w * joints).sum(0) / w.sum()
    s = max(0.0, (w * a * b).sum() / (w * a * a).sum())
    errs.append((w[:, 0] * ((s * a - b) ** 2).sum(1)).sum() / w.sum())
  return int(np.argmin(errs))


def test_artifact_chooses_by_reprojection_error(exported, synthetic_clip):
  config, paths = exported
  serve = _load_loader()
  fn, _ = serve.load(str(pathlib.Path(paths['model']).parent))
  out = fn(_batch(synthetic_clip, config, list(range(0, 30, 3)))['image'])
  for k in range(len(out['pose'])):
    assert out['chosen'][k] == _orthographic_choice(out['hyps'][k], out['joints_2d'][k],
                                                    out['confidence'][k])
    np.testing.assert_array_equal(out['pose'][k], out['hyps'][k, out['chosen'][k]])


def test_pipeline_without_hourglass_chooses_the_base_hypothesis(tiny_pipeline, synthetic_clip):
  config = tiny_pipeline.config()
  loaded = pipeline.load_stages(config, tiny_pipeline.workdir, ('skeleton_net', 'regressor'))
  fn = jax.jit(pipeline.make_pipeline_fn(config, loaded, with_maps=False))
  variables = {k: v['variables'] for k, v in loaded.items()}
  norms = {k: v['norm'] for k, v in loaded.items()}
  out = fn(variables, norms, _batch(synthetic_clip, config, [0, 1])['image'])
  assert np.all(np.asarray(out['chosen']) == config.hypotheses.base)
  np.testing.assert_allclose(np.asarray(out['joints_2d']).mean(1), config.data.input_size / 2,
                             atol=1e-3)  # the base hypothesis' projection, centred
  np.testing.assert_allclose(out['confidence'], 1.0)


def test_model_json_lists_inputs_and_outputs_in_call_order(exported):
  config, paths = exported
  spec = json.loads(pathlib.Path(paths['spec']).read_text())
  s, c, h = config.data.input_size, len(config.data.crop_scales), 2
  m = s // 4
  assert spec['inputs'] == [{'name': 'crops', 'shape': ['b', c, s, s, 3], 'dtype': 'uint8',
                             'description': spec['inputs'][0]['description']}]
  want = [('pose', ['b', 16, 3], 'float32'), ('chosen', ['b'], 'int32'),
          ('hyps', ['b', h, 16, 3], 'float32'), ('joints_2d', ['b', 16, 2], 'float32'),
          ('confidence', ['b', 16], 'float32'), ('maps', ['b', h, m, m, 6], 'float32')]
  assert [(o['name'], o['shape'], o['dtype']) for o in spec['outputs']] == want
  pre = spec['preprocessing']
  assert pre['crop_size'] == s and pre['crop_scales'] == list(config.data.crop_scales)
  np.testing.assert_allclose(pre['normalization']['mean'], [0.485, 0.456, 0.406])
  np.testing.assert_allclose(pre['normalization']['std'], [0.229, 0.224, 0.225])
  assert 'continuous' in pre['pixel_convention'] and spec['platforms'] == ['cpu', 'cuda']


def test_one_artifact_lowered_for_cpu_and_cuda(exported):
  """CUDA lowering works on this CPU-only machine; the artifact holds both."""
  _, paths = exported
  assert jax.devices()[0].platform == 'cpu'
  artifact = jax.export.deserialize(bytearray(pathlib.Path(paths['model']).read_bytes()))
  assert artifact.platforms == ('cpu', 'cuda')
  assert str(artifact.in_avals[0].shape[0]) == 'b'
  assert len(artifact.in_avals) == 1  # only the crops: the variables are constants
  assert pathlib.Path(paths['model']).stat().st_size > 10_000


def test_loader_crops_match_make_batch(exported, synthetic_clip):
  config, paths = exported
  serve = _load_loader()
  spec = json.loads(pathlib.Path(paths['spec']).read_text())
  for i in (0, 15, 29):  # boxes partly outside the frame included
    mine = serve.crop(synthetic_clip.frames[i], synthetic_clip.boxes[i], spec)
    want = _batch(synthetic_clip, config, [i])['image'][0]
    assert np.abs(mine.astype(int) - want.astype(int)).max() <= 1
  joints = np.array([[0.0, 0.0], [spec['preprocessing']['crop_size']] * 2])
  box = synthetic_clip.boxes[3]
  side = max(box[2] - box[0], box[3] - box[1])
  centre = (box[:2] + box[2:]) / 2
  np.testing.assert_allclose(serve.to_image(joints, box, spec),
                             [centre - side / 2, centre + side / 2], rtol=1e-6)


def test_bad_platforms_name_the_field(tiny_pipeline):
  config = tiny_pipeline.config()
  with config.unlocked():
    config.export.platforms = ('cpu', 'gpu')
  with pytest.raises(errors.ConfigError, match='config.export.platforms'):
    export.export(config, tiny_pipeline.workdir)
