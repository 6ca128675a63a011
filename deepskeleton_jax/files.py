"""Atomic file output: a file appears complete under its name, or not at all.

Every report, figure, prediction and export is written to a temporary file in
the target folder and renamed over the target when complete (`os.replace` is
atomic within a file system), so a killed run never leaves half a file that
looks finished; on an error the temporary file is removed. The file gets
the permissions a plain `open(path, 'w')` would give (0666 less the umask),
not the temporary file's 0600.

`exclusive_lock` serialises processes that build the same thing (a dataset).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from typing import Callable, Iterator


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
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def umask() -> int:
  """The process' umask, read without changing it (Linux), else by setting it back."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike,
                   on_wait: Callable[[], None] | None = None) -> Iterator[None]:
  """Holds an exclusive `flock` on `path` (created if absent) for the block.

  The lock goes with the process: a killed holder releases it. If the file is
  removed or replaced while a process waits, it locks the new file instead.

  Args:
    path: the lock file; its folder must exist.
    on_wait: called once if another process holds the lock (e.g. to log).

  Yields:
    Nothing.
  """
  path = os.fspath(path)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        if on_wait is not None:
          on_wait()
          on_wait = None
        fcntl.flock(fd, fcntl.LOCK_EX)
      try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        yield
        return
    finally:
      os.close(fd)  # releases the lock
    time.sleep(0.01)


def writable_folder_problem(path: str | os.PathLike) -> str | None:
  """Why files cannot be written in folder `path` (created if needed), or None.

  Args:
    path: the folder; it or its nearest existing ancestor is examined. A URL
      (gs://...) is not examined.

  Returns:
    e.g. '/x/w is a file, not a folder' or '/x/w is not writable', or None.
  """
  if '://' in os.fspath(path):
    return None
  current = os.path.abspath(os.path.expanduser(os.fspath(path)))
  while not os.path.exists(current):
    parent = os.path.dirname(current)
    if parent == current:
      return None
    current = parent
  if not os.path.isdir(current):
    return f'{current} is a file, not a folder'
  if not os.access(current, os.W_OK | os.X_OK):
    return f'{current} is not writable (its permissions or a read-only file system)'
  return None


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
