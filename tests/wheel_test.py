"""The wheel: built from the checkout, installed into a fresh venv, used from elsewhere.

Builds the wheel as a user's `pip install .` would (`pip wheel`, no build
isolation: no network), checks that it holds every module of the package, the
configs and the dataset builders (pyproject's package-dir mapping) and the
console script, then installs it with `--no-deps` into a new venv that sees
this interpreter's packages (`--system-site-packages`) and runs it from a
directory outside the checkout, with no PYTHONPATH, so that only the installed
copy can be imported.
"""

import ast
import configparser
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
BUILDERS = ['bvh_mocap', 'human36m', 'mpii', 'synthetic']
# The checkout's redirects to benchmarks/, configs/ and datasets/; the wheel holds the
# folders' files there.
CHECKOUT_SHIMS = ('deepskeleton_jax/benchmarks/__init__.py', 'deepskeleton_jax/configs/__init__.py',
                  'deepskeleton_jax/datasets/__init__.py')
# Build products and local state that are not sources.
_NOT_SOURCES = shutil.ignore_patterns('.git', 'build', 'dist', '*.egg-info', '__pycache__',
                                      '.pytest_cache', 'workdir', 'tensorflow_datasets')


def expected_modules() -> set[str]:
  """The wheel paths of every module: the package's, benchmarks/, configs/ and datasets/*/."""
  modules = {str(p.relative_to(REPO)) for p in (REPO / 'deepskeleton_jax').rglob('*.py')
             if '__pycache__' not in p.parts}
  modules -= set(CHECKOUT_SHIMS)
  modules |= {f'deepskeleton_jax/configs/{p.name}' for p in (REPO / 'configs').glob('*.py')}
  modules |= {f'deepskeleton_jax/benchmarks/{p.name}' for p in (REPO / 'benchmarks').glob('*.py')}
  modules |= {f'deepskeleton_jax/datasets/{p.parent.name}/{p.name}'
              for p in (REPO / 'datasets').glob('*/*.py')}
  return modules


def _run(args, cwd, timeout=600, check=True):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
  out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout, check=False)
  if check and out.returncode:
    raise AssertionError(f'{args} exited {out.returncode}:\n{out.stdout}\n{out.stderr}')
  return out


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> pathlib.Path:
  """The wheel built from a copy of the checkout (the checkout gets no build/ folder)."""
  root = tmp_path_factory.mktemp('wheel')
  source = root / 'source'
  shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
  _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
        '--no-index', '-w', root / 'dist', source], cwd=root)
  (path,) = (root / 'dist').glob('deepskeleton_jax-*.whl')
  return path


@pytest.fixture(scope='module')
def venv(wheel, tmp_path_factory) -> pathlib.Path:
  """A fresh venv (with this interpreter's packages) with the wheel installed; its bin/."""
  root = tmp_path_factory.mktemp('venv')
  _run([sys.executable, '-m', 'venv', '--system-site-packages', root / 'venv'], cwd=root)
  bin_dir = root / 'venv' / 'bin'
  _run([bin_dir / 'python', '-m', 'pip', 'install', '--no-deps', '--no-index', wheel],
       cwd=root)
  return bin_dir


def test_wheel_holds_every_module_config_builder_and_the_console_script(wheel):
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    (entry_points,) = [n for n in names if n.endswith('.dist-info/entry_points.txt')]
    scripts = configparser.ConfigParser()
    scripts.read_string(archive.read(entry_points).decode())
  python_files = {n for n in names if n.endswith('.py')}
  expected = expected_modules()
  assert {f'deepskeleton_jax/datasets/{b}/{b}.py' for b in BUILDERS} <= expected
  assert 'deepskeleton_jax/configs/h36m_skeleton_net.py' in expected
  assert python_files == expected, {'missing': sorted(expected - python_files),
                                    'unexpected': sorted(python_files - expected)}
  assert dict(scripts['console_scripts']) == {'deepskeleton-jax': 'deepskeleton_jax.cli:run'}


_USE_INSTALLED = """
import json
import deepskeleton_jax
from deepskeleton_jax.configs import h36m_skeleton_net
from deepskeleton_jax.data import registry
config = h36m_skeleton_net.get_config('gt')
print(json.dumps({'package': deepskeleton_jax.__file__, 'available': registry.available(),
                  'synthetic': registry.builder_class('synthetic').name,
                  'datasets_dir': str(registry.DATASETS_DIR),
                  'config': [config.data.name, config.stages]}))
"""


def test_installed_package_has_builders_and_configs(venv, tmp_path):
  out = _run([venv / 'python', '-c', _USE_INSTALLED], cwd=tmp_path)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  site = venv.parent / 'lib'
  assert pathlib.Path(result.pop('package')).is_relative_to(site), out.stdout
  assert pathlib.Path(result.pop('datasets_dir')).is_relative_to(site), out.stdout
  assert result == {'available': BUILDERS, 'synthetic': 'synthetic',
                    'config': ['human36m', 'skeleton_net']}


def test_console_script_help_describes_the_demo(venv, tmp_path):
  doc = ast.get_docstring(ast.parse((REPO / 'configs' / 'demo.py').read_text()))
  summary = doc.splitlines()[0]
  out = _run([venv / 'deepskeleton-jax', '--help'], cwd=tmp_path)
  assert summary in out.stdout, out.stdout
  assert 'deepskeleton-jax --config=<name or path>' in out.stdout, out.stdout


def test_console_script_names_an_unknown_config(venv, tmp_path):
  out = _run([venv / 'deepskeleton-jax', '--config=nope'], cwd=tmp_path, check=False)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, (out.stdout, out.stderr)
  assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr
  assert "no config named 'nope'" in lines[0] and 'h36m_skeleton_net' in lines[0], lines
  assert not list(tmp_path.iterdir())  # nothing written
