"""The tree's own rules: sizes, the facade, no sys.path edits, references inside the repo,
serving without the trainer, no import cycles."""

import ast
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

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


# The serving side: importing every module of these loads no trainer (the rule).
SERVING_PACKAGES = ('inference', 'evaluation', 'visualization', 'experiment')
TRAINER_MODULES = ('optax', 'deepskeleton_jax.training.train_step',
                   'deepskeleton_jax.training.train_loop')
_IMPORT_ALL = """
import importlib, json, sys
names = json.loads(sys.argv[1])
for name in names:
  importlib.import_module(name)
print(json.dumps({'imported': sum(n in sys.modules for n in names),
                  'trainer': [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def test_serving_packages_import_no_trainer():
  """A fresh interpreter imports every serving module; optax and the trainer stay out."""
  # The ONNX converter needs the optional `onnx` extra (requirements-onnx.txt).
  optional = () if importlib.util.find_spec('onnx') else ('onnx_convert', 'onnx_ops')
  names = [f'deepskeleton_jax.{package}.{path.stem}' for package in SERVING_PACKAGES
           for path in sorted((REPO / 'deepskeleton_jax' / package).glob('*.py'))
           if path.stem != '__init__' and path.stem not in optional]
  assert len(names) >= 20, names
  out = subprocess.run([sys.executable, '-c', _IMPORT_ALL, json.dumps(names),
                        json.dumps(TRAINER_MODULES)], cwd=REPO, capture_output=True,
                       text=True, check=True, timeout=600)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result == {'imported': len(names), 'trainer': []}, result


def _package_modules() -> dict[str, pathlib.Path]:
  """Every module of the package as installed: dotted name -> file in the checkout."""
  modules = {}
  for path in sorted((REPO / 'deepskeleton_jax').rglob('*.py')):
    parts = path.relative_to(REPO).with_suffix('').parts
    modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  for path in sorted((REPO / 'configs').glob('*.py')):
    modules[f'deepskeleton_jax.configs.{path.stem}'] = path
  for path in sorted((REPO / 'datasets').glob('*/*.py')):
    modules[f'deepskeleton_jax.datasets.{path.parent.name}.{path.stem}'] = path
  return modules


def _import_time_statements(tree: ast.Module):
  """The import statements that run when the module is imported.

  The module body, including if/try/with blocks and class bodies; not function
  bodies (deferred imports) nor `if TYPE_CHECKING:` blocks.
  """
  pending = list(tree.body)
  while pending:
    node = pending.pop()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, ast.If) and 'TYPE_CHECKING' in ast.unparse(node.test):
      pending.extend(node.orelse)
    elif isinstance(node, ast.stmt) and not isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      pending.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt))


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
  """Module -> the package modules it imports at import time.

  `import a.b` and `from a import b` (b a module) point at `a.b`; `from a
  import name` (name not a module) at `a`; relative imports are resolved.
  Parent packages that Python initialises on the way are not edges.

  Args:
    modules: dotted name -> file (`_package_modules`).

  Returns:
    The graph, restricted to `modules`.
  """
  graph = {}
  for name, path in modules.items():
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    targets = set()
    for node in _import_time_statements(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
        continue
      base = node.module or ''
      if node.level:
        anchor = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
        base = f'{anchor}.{base}' if base else anchor
      targets.update(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base
                     for alias in node.names)
    graph[name] = {t for t in targets if t in modules and t != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One import cycle as [a, b, ..., a], or [] when the graph is acyclic."""
  state = {}  # name -> 'open' (on the current path) or 'done'
  path = []

  def visit(node):
    state[node] = 'open'
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = 'done'
    path.pop()
    return []

  for start in sorted(graph):
    if start not in state:
      found = visit(start)
      if found:
        return found
  return []


def test_find_cycle_names_the_cycle():
  graph = {'a': {'b'}, 'b': {'c', 'd'}, 'c': {'a'}, 'd': set()}
  assert find_cycle(graph) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) == []


def test_import_graph_resolves_each_import_form(tmp_path):
  files = {'pkg/__init__.py': 'from pkg import b\n',
           'pkg/a.py': 'import pkg.b\nfrom . import c\nfrom .c import VALUE\n'
                       'def f():\n  from pkg import d\n',
           'pkg/b.py': 'from pkg.c import VALUE\nclass K:\n  from pkg import d\n',
           'pkg/c.py': 'VALUE = 1\n',
           'pkg/d.py': 'import typing\nif typing.TYPE_CHECKING:\n  from pkg import a\n'}
  modules = {}
  for rel, text in files.items():
    (tmp_path / rel).parent.mkdir(exist_ok=True)
    (tmp_path / rel).write_text(text)
    name = rel[:-3].replace('/', '.').replace('.__init__', '')
    modules[name] = tmp_path / rel
  assert import_graph(modules) == {'pkg': {'pkg.b'}, 'pkg.a': {'pkg.b', 'pkg.c'},
                                   'pkg.b': {'pkg.c', 'pkg.d'}, 'pkg.c': set(),
                                   'pkg.d': set()}


def test_no_import_cycles():
  """Module-level imports of the whole package (configs and dataset builders too) form no cycle."""
  modules = _package_modules()
  graph = import_graph(modules)
  assert 'deepskeleton_jax.datasets.bvh_mocap.bvh' in graph['deepskeleton_jax.datasets.bvh_mocap.bvh_mocap']
  cycle = find_cycle(graph)
  assert not cycle, 'import cycle: ' + ' -> '.join(cycle)
