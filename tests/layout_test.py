"""The tree's own rules: sizes, the facade, no sys.path edits, references inside the repo."""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = [p for d in ('deepskeleton_jax', 'datasets', 'benchmarks', 'examples')
           for p in sorted((REPO / d).rglob('*.py'))] + [REPO / 'run.py']


def _functions(path):
  tree = ast.parse(path.read_text())
  return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize('path', LIBRARY, ids=lambda p: str(p.relative_to(REPO)))
def test_no_file_over_500_lines_no_function_over_80(path):
  assert path.read_text().count('\n') <= 500
  long = [(name, n) for name, n in _functions(path) if n > 80]
  assert not long, long


def test_public_facade():
  from deepskeleton_jax import camera, matching, metrics, rasterize, skeleton  # pylint: disable=g-import-not-at-top
  from deepskeleton_jax.models import hourglass, regressor, resnet, skeleton_net  # pylint: disable=g-import-not-at-top
  assert skeleton.ROOT == 7 and len(skeleton.BONES) == 15
  for mod, names in ((rasterize, ['skeleton_maps']), (camera, ['project']),
                     (metrics, ['mpjpe', 'pa_mpjpe', 'pckh', 'mpii_head_size']),
                     (matching, ['reprojection_error', 'select'])):
    assert all(hasattr(mod, n) for n in names), mod
  assert resnet.ResNet50 and skeleton_net.SkeletonMapNet and regressor.PoseRegressor
  assert hourglass.StackedHourglass


def test_no_sys_path_edits():
  for path in [REPO / 'run.py', *(REPO / 'configs').glob('*.py'), *(REPO / 'tests').glob('*.py')]:
    if path.name == 'layout_test.py':
      continue
    assert 'sys.path.insert' not in path.read_text() and 'sys.path.append' not in path.read_text(), path


def test_test_basenames_are_unique_and_all_under_tests():
  tests = [p for p in REPO.rglob('*_test.py') if '.git' not in p.parts]
  assert all(p.parent == REPO / 'tests' for p in tests), [str(p) for p in tests
                                                          if p.parent != REPO / 'tests']
  names = [p.name for p in tests]
  assert len(names) == len(set(names))


def test_design_references_point_inside_the_repository():
  assert (REPO / 'docs' / 'DESIGN.md').is_file()
  for path in LIBRARY:
    for ref in re.findall(r'[\w/.]*DESIGN\.md', path.read_text()):
      assert (REPO / ref).is_file(), f'{path}: {ref}'
