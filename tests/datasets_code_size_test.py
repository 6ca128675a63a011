"""The dataset builders stay readable: no file over 500 lines, no function over 80."""

import ast

import pytest

from deepskeleton_jax.data import registry

_FILES = sorted(registry.DATASETS_DIR.rglob('*.py'))


@pytest.mark.parametrize('path', _FILES, ids=lambda p: p.name)
def test_dataset_code_size(path):
  text = path.read_text()
  assert len(text.splitlines()) <= 500, path
  long = [(node.name, node.end_lineno - node.lineno + 1)
          for node in ast.walk(ast.parse(text))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > 80]
  assert not long, f'{path}: functions over 80 lines: {long}'
