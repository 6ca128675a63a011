"""Atomic file output: a file appears complete under its name, or not at all.

Every report, figure, prediction and export is written to a temporary file in
the target folder and renamed over the target when complete (`os.replace` is
atomic within a file system), so a killed run never leaves half a file that
looks finished; on an error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it to `path` on success.

  Args:
    path: the final file. Its folder must exist.

  Yields:
    The temporary file's path (same folder and extension, so writers that
    pick a format by extension, e.g. matplotlib or NumPy, still work).
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix=suffix)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)
