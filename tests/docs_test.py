"""The user docs (README.md, docs/*.md) against the tree they describe.

Checks what goes stale when code moves: the README's length, relative links
and their anchors, the repository paths, configs, `--config.<group>.<key>`
overrides and `--mode=` values that the pages name. Fast: reads files and
imports config modules (plain Python), no JAX compile.
"""

import ast
import functools
import importlib
import pathlib
import re

import ml_collections
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
PAGES = [README, *sorted((REPO / 'docs').glob('*.md'))]
README_MAX_LINES = 250
DEMO = 'demo'

_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
_CODE_SPAN = re.compile(r'`([^`]+)`')
_CONFIG_VALUE = re.compile(r'--config=([^\s`"\'\\\]]+)')
_OVERRIDE = re.compile(r'--config\.([A-Za-z_<][\w.<>]*)')
_MODE = re.compile(r'--mode=(\w+)')
_CONFIG_FILE = re.compile(r'(?<![\w/.])configs/(\w+)\.py')
_PACKAGES = ('geometry', 'data', 'models', 'experiment', 'training', 'inference',
             'evaluation', 'visualization')
# A repository path (from the root, or from deepskeleton_jax/ for a subpackage).
_REPO_PATH = re.compile(
    r'(?<![\w/.])((?:deepskeleton_jax|tests|examples|benchmarks|datasets|configs|docs|'
    + '|'.join(_PACKAGES) + r')/[\w/]*\w\.(?:py|md|png))')
# Builder options are the builders' own dataclass fields, not config keys.
_UNCHECKED_PREFIX = ('data', 'builder_kwargs')


def _ids(path: pathlib.Path) -> str:
  return str(path.relative_to(REPO))


def _split_code(text: str) -> tuple[list[str], list[list[str]]]:
  """Prose lines (fenced blocks blanked) and the fenced blocks' lines."""
  prose, blocks, block = [], [], None
  for line in text.splitlines():
    if line.lstrip().startswith('```'):
      if block is None:
        block = []
      else:
        blocks.append(block)
        block = None
      prose.append('')
    elif block is not None:
      block.append(line)
      prose.append('')
    else:
      prose.append(line)
  return prose, blocks


def _command_units(text: str) -> list[str]:
  """Pieces that are read as one command line: a fenced block's logical lines
  (backslash continuations joined), each inline code span, and the rest of each
  prose paragraph."""
  prose, blocks = _split_code(text)
  units = []
  for block in blocks:
    units.extend(re.sub(r'\\\n\s*', ' ', '\n'.join(block)).split('\n'))
  for paragraph in re.split(r'\n\s*\n', '\n'.join(prose)):
    joined = ' '.join(paragraph.split())
    units.extend(_CODE_SPAN.findall(joined))
    units.append(_CODE_SPAN.sub(' ', joined))
  return units


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading."""
  text = heading.strip().lower().replace('`', '')
  return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def _anchors(path: pathlib.Path) -> set[str]:
  prose, _ = _split_code(path.read_text())
  return {_slug(m.group(1)) for line in prose for m in [re.match(r'#+\s+(.*)', line)] if m}


def _named_config(value: str) -> tuple[str, str | None] | None:
  """(name, arg) of a `--config=` value naming a shipped config, else None."""
  name, _, arg = value.partition(':')
  if name.startswith('configs/') and name.endswith('.py'):
    name = name[len('configs/'):-len('.py')]
  if not name.isidentifier():
    return None  # a placeholder (<name>) or a path outside the repository
  return name, arg or None


@functools.lru_cache(maxsize=None)
def _load_config(name: str, arg: str | None) -> ml_collections.ConfigDict:
  return importlib.import_module(f'configs.{name}').get_config(arg)


def _has_key(node, parts: list[str]) -> bool:
  """Whether the dotted key exists; a `<placeholder>` part matches any key."""
  if not parts:
    return True
  if not isinstance(node, ml_collections.ConfigDict):
    return False
  head, rest = parts[0], parts[1:]
  if head.startswith('<'):
    return any(_has_key(node[k], rest) for k in node.keys())
  return head in node and _has_key(node[head], rest)


def test_readme_is_short():
  lines = len(README.read_text().splitlines())
  assert lines <= README_MAX_LINES, (
      f'README.md has {lines} lines (at most {README_MAX_LINES}): move details to docs/')


@pytest.mark.parametrize('page', PAGES, ids=_ids)
def test_relative_links_resolve(page):
  prose, _ = _split_code(page.read_text())
  broken = []
  for target in _LINK.findall('\n'.join(prose)):
    if re.match(r'[a-z]+:', target):
      continue  # http(s), mailto
    file_part, _, anchor = target.partition('#')
    linked = (page.parent / file_part).resolve() if file_part else page
    if not linked.exists():
      broken.append(f'{target}: no file {linked}')
    elif anchor and linked.suffix == '.md' and anchor not in _anchors(linked):
      broken.append(f'{target}: no heading #{anchor} in {_ids(linked)}')
  assert not broken, f'{_ids(page)}: {broken}'


@pytest.mark.parametrize('page', PAGES, ids=_ids)
def test_repository_paths_exist(page):
  missing = []
  for path in sorted(set(_REPO_PATH.findall(page.read_text()))):
    root = REPO / 'deepskeleton_jax' if path.split('/')[0] in _PACKAGES else REPO
    if not (root / path).exists():
      missing.append(path)
  assert not missing, f'{_ids(page)} names paths that do not exist: {missing}'


@pytest.mark.parametrize('page', PAGES, ids=_ids)
def test_named_configs_exist(page):
  text = page.read_text()
  names = set(_CONFIG_FILE.findall(text))
  names |= {named[0] for v in _CONFIG_VALUE.findall(text) if (named := _named_config(v))}
  missing = sorted(n for n in names if not (REPO / 'configs' / f'{n}.py').is_file())
  assert not missing, f'{_ids(page)} names configs that do not exist: {missing}'


@pytest.mark.parametrize('page', PAGES, ids=_ids)
def test_overrides_name_existing_keys(page):
  unknown = []
  for unit in _command_units(page.read_text()):
    keys = [k.rstrip('.') for k in _OVERRIDE.findall(unit)]
    if not keys:
      continue
    named = [n for v in _CONFIG_VALUE.findall(unit) if (n := _named_config(v))]
    configs = [_load_config(DEMO, None)] + [_load_config(*n) for n in named]
    for key in keys:
      parts = key.split('.')
      if tuple(parts[:len(_UNCHECKED_PREFIX)]) == _UNCHECKED_PREFIX:
        continue
      if not any(_has_key(c, parts) for c in configs):
        unknown.append(f'--config.{key} (in: {unit.strip()[:100]})')
  assert not unknown, f'{_ids(page)}: overrides of keys no config has: {unknown}'


def _cli_modes() -> tuple[str, ...]:
  tree = ast.parse((REPO / 'deepskeleton_jax' / 'cli.py').read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == '_MODES':
      return ast.literal_eval(node.value)
  raise AssertionError('cli.py has no _MODES')


def test_modes_are_the_cli_modes():
  modes = _cli_modes()
  used = {m for page in PAGES for m in _MODE.findall(page.read_text())}
  assert used <= set(modes), f'--mode values the command line lacks: {used - set(modes)}'
  readme = README.read_text()
  assert all(f'`{m}`' in readme for m in modes), 'README.md should list every --mode'


def test_every_shipped_config_is_in_the_experiments_page():
  text = (REPO / 'docs' / 'experiments.md').read_text()
  shipped = [p.stem for p in sorted((REPO / 'configs').glob('*.py'))
             if 'def get_config' in p.read_text()]
  assert shipped and all(f'configs/{n}.py' in text for n in shipped), (
      [n for n in shipped if f'configs/{n}.py' not in text])
