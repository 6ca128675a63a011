"""User errors on the command line: one line `error: ...` on stderr, exit status 2.

Each test runs `python run.py` (or the exported model's loader) in a fresh
process, as a user would, and checks that stderr is exactly that one line:
no traceback, no log lines before it (the checks run before any work).
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.inference import export

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS='cpu')


def _one_line_error(cmd, **kwargs) -> str:
  """Runs `cmd`; asserts exit status 2 and a single `error:` line; returns it."""
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(REPO),
                       env=ENV, **kwargs)
  lines = out.stderr.splitlines()
  assert out.returncode == 2, out.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr[-3000:]
  return lines[0]


def _run_py(*args, workdir):
  return [sys.executable, str(REPO / 'run.py'), '--config=tiny', f'--workdir={workdir}',
          *args]


@pytest.mark.parametrize('flag,message', [
    ('--config.direct_rgb.train.checkpoint_every=0',
     'config.direct_rgb.train.checkpoint_every=0 is invalid: expected a positive number of steps'),
    ('--config.direct_rgb.train.log_every=0',
     'config.direct_rgb.train.log_every=0 is invalid: expected a positive number of steps'),
    ('--config.direct_rgb.train.keep_checkpoints=-1',
     'config.direct_rgb.train.keep_checkpoints=-1 is invalid: expected how many of the '
     'newest checkpoints to keep (0: all)'),
    ('--config.eval.batch_size=0', 'config.eval.batch_size=0 is invalid: expected a '
     'positive integer'),
    ('--config.eval.max_examples=-1', 'config.eval.max_examples=-1 is invalid: expected a '
     'number of examples (0: the whole split)'),
])
def test_bad_counts_are_one_line(tmp_path, flag, message):
  line = _one_line_error(_run_py('--mode=train', '--config.stages=direct_rgb', flag,
                                 workdir=tmp_path / 'w'))
  assert line == f'error: {message}'
  assert not (tmp_path / 'w').exists()


def test_misspelt_key_names_the_flag_and_the_suggestion(tmp_path):
  line = _one_line_error(_run_py('--mode=eval', '--config.eval.batchsize=3',
                                 workdir=tmp_path))
  assert line.startswith("error: flag --config.eval.batchsize: the config has no key "
                         "'batchsize'; did you mean 'batch_size'? ")
  assert '\\' not in line


def test_key_below_a_value_names_the_flag(tmp_path):
  line = _one_line_error(_run_py('--mode=eval', '--config.eval.batch_size.x=1',
                                 workdir=tmp_path))
  assert line.startswith('error: flag --config.eval.batch_size.x: ')


@pytest.mark.parametrize('source,expected', [
    ('def get_config(:\n  pass\n', 'bad.py line 1: invalid syntax'),
    ('import ml_collections\nCONFIG = ml_collections.ConfigDict()\n',
     'bad.py defines no get_config()'),
])
def test_broken_config_file_is_one_line(tmp_path, source, expected):
  path = tmp_path / 'bad.py'
  path.write_text(source)
  line = _one_line_error([sys.executable, str(REPO / 'run.py'), f'--config={path}',
                          '--mode=eval', f'--workdir={tmp_path}'])
  assert line.startswith(f'error: --config={path}: ') and expected in line


@pytest.mark.parametrize('mode,below', [('eval', ''), ('train', ''), ('train', 'sub')])
def test_workdir_that_is_a_file_is_one_line(tmp_path, mode, below):
  afile = tmp_path / 'afile'
  afile.write_text('not a folder')
  workdir = afile / below if below else afile
  line = _one_line_error(_run_py(f'--mode={mode}', workdir=workdir))
  assert line.startswith(f'error: --workdir={workdir}: {afile} is a file, not a folder')


def _read_only(folder: pathlib.Path, cmd: list[str]) -> list[str]:
  """`cmd` run with `folder` read-only: a read-only bind mount in a private mount
  namespace as root (root ignores permissions), else the folder's permissions."""
  if os.geteuid() != 0:
    folder.chmod(0o555)
    return cmd
  if shutil.which('unshare') is None:
    pytest.skip('running as root without unshare: cannot make a read-only folder')
  probe = subprocess.run(['unshare', '-m', 'true'], capture_output=True)
  if probe.returncode:
    pytest.skip(f'unshare -m is not permitted here: {probe.stderr.decode()[:200]}')
  script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
  return ['unshare', '-m', 'sh', '-c', script, str(folder), *cmd]


def test_read_only_workdir_is_refused_before_the_evaluation_runs(tmp_path):
  workdir = tmp_path / 'w'
  (workdir / 'direct_rgb').mkdir(parents=True)
  cmd = _read_only(workdir, _run_py('--mode=eval', workdir=workdir))
  try:
    line = _one_line_error(cmd)
  finally:
    workdir.chmod(0o755)
  assert line.startswith(f'error: --workdir={workdir}: {workdir} is not writable')
  assert f'--mode=eval writes to {workdir}/eval' in line


def _artifact(folder: pathlib.Path) -> np.ndarray:
  """A small exported function (sum of each crop) as model.jax + model.json."""
  b, = jax.export.symbolic_shape('b')
  fn = jax.jit(lambda crops: (jnp.sum(crops.astype(jnp.float32), axis=(1, 2, 3, 4)),))
  exported = jax.export.export(fn, platforms=('cpu',))(
      jax.ShapeDtypeStruct((b, 1, 4, 4, 3), jnp.uint8))
  export.write_artifact(str(folder), bytes(exported.serialize()),
                        {'outputs': [{'name': 'total'}]})
  crops = np.arange(2 * 48, dtype=np.uint8).reshape(2, 1, 4, 4, 3)
  np.save(folder / 'crops.npy', crops)
  return crops


def _serve(folder):
  return [sys.executable, '-I', str(REPO / 'examples' / 'serve_exported.py'), str(folder),
          str(folder / 'crops.npy'), str(folder / 'out.npz')]


def test_model_json_records_size_and_sha256_and_loader_refuses_a_truncated_model(tmp_path):
  crops = _artifact(tmp_path)
  data = (tmp_path / 'model.jax').read_bytes()
  record = json.loads((tmp_path / 'model.json').read_text())['artifact']
  assert record == {'file': 'model.jax', 'bytes': len(data),
                    'sha256': hashlib.sha256(data).hexdigest()}
  ok = subprocess.run(_serve(tmp_path), capture_output=True, text=True, timeout=300, env=ENV)
  assert ok.returncode == 0, ok.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / 'out.npz')['total'],
                             crops.reshape(2, -1).sum(1).astype(np.float32))

  (tmp_path / 'model.jax').write_bytes(data[:len(data) // 2])
  line = _one_line_error(_serve(tmp_path))
  assert line.startswith(f'error: {tmp_path}/model.jax has {len(data) // 2} bytes')
  assert f'records {len(data)} bytes' in line

  # A model.json from before the record: the damaged file still gives one line.
  spec = json.loads((tmp_path / 'model.json').read_text())
  del spec['artifact']
  (tmp_path / 'model.json').write_text(json.dumps(spec))
  line = _one_line_error(_serve(tmp_path))
  assert line.startswith(f'error: {tmp_path}/model.jax is not a jax.export artifact')
