"""MATLAB .mat files: a structural check before `scipy.io.loadmat`.

scipy's reader of MAT v5 files (compiled) can crash the whole process
(segmentation fault) on a damaged file, e.g. one whose data element carries an
unknown type code; a damaged annotation or detection file must give one
`errors.InputError` instead. `load` first walks the file's element tree (every
tag's type and size, compressed elements decompressed and their zlib checksum
verified) and only then hands it to scipy. MAT v4 files and MATLAB v7.3
(HDF5) files have no such tree; they pass to scipy unchecked (its v4 reader
is Python, and it refuses v7.3 with NotImplementedError).

Format: MATLAB's "MAT-File Format" (v5): a 128-byte header whose last two
bytes are 'IM' (little-endian) or 'MI'; then data elements, each an 8-byte tag
(type, byte count) and its data padded to 8 bytes, or a 'small' element
(count in the tag's upper 16 bits, up to 4 bytes of data in the tag's second
word). miMATRIX elements hold sub-elements; miCOMPRESSED ones hold a zlib
stream of elements and are not padded.
"""

from __future__ import annotations

import os
import struct
from typing import Any
import zlib

import scipy.io

from deepskeleton_jax import errors

_MATRIX, _COMPRESSED = 14, 15
# miINT8 .. miUINT32, miSINGLE, miDOUBLE, miINT64, miUINT64, miUTF8/16/32.
_DATA = frozenset((1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18))
_HEADER = 128
_MAX_DEPTH = 64


def _problem(buf: bytes, pos: int, end: int, order: str, top: bool, depth: int = 0
             ) -> str | None:
  """Why the elements in buf[pos:end] are not well formed, or None."""
  if depth > _MAX_DEPTH:
    return f'elements nested more than {_MAX_DEPTH} deep'
  while pos < end:
    if end - pos < 8:
      return f'a truncated element tag at byte {pos}'
    kind, size = struct.unpack_from(order + 'II', buf, pos)
    if kind >> 16:  # a small element: its data is the tag's second word
      if kind & 0xFFFF not in _DATA or kind >> 16 > 4:
        return f'a malformed small element at byte {pos}'
      pos += 8
      continue
    allowed = (_MATRIX, _COMPRESSED) if top else _DATA | {_MATRIX}
    if kind not in allowed:
      return f'an element of unknown or misplaced type {kind} at byte {pos}'
    start, stop = pos + 8, pos + 8 + size
    if stop > end:
      return f'an element at byte {pos} runs past the end of its container'
    if kind == _COMPRESSED:
      try:
        inner = zlib.decompress(buf[start:stop])
      except zlib.error as e:
        return f'damaged compressed data at byte {pos} ({e})'
      problem = _problem(inner, 0, len(inner), order, False, depth + 1)
    elif kind == _MATRIX:
      problem = _problem(buf, start, stop, order, False, depth + 1)
    else:
      problem = None
    if problem:
      return problem
    pos = stop if kind == _COMPRESSED else min(stop + (-size % 8), end)
  return None


def check(path: str | os.PathLike) -> None:
  """Raises `errors.InputError` naming `path` when its MAT v5 structure is damaged.

  Args:
    path: a .mat file (MAT v4 and v7.3 files pass unchecked).
  """
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise errors.InputError(f'{path}: cannot read the .mat file ({e})') from None
  endian = data[126:128]
  if len(data) < _HEADER or endian not in (b'IM', b'MI') or data[:6] != b'MATLAB':
    return  # not MAT v5: v4 (scipy reads it in Python) or too short for scipy
  if data[:19] == b'MATLAB 7.3 MAT-file':
    return  # HDF5 inside: scipy refuses it, h5py reads it
  problem = _problem(data, _HEADER, len(data), '<' if endian == b'IM' else '>', True)
  if problem:
    raise errors.InputError(f'{path}: a damaged MATLAB .mat file ({problem}); expected a '
                            'MAT file as MATLAB or scipy.io.savemat writes it')


def load(path: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
  """`scipy.io.loadmat(path, **kwargs)` after `check(path)`.

  Raises:
    errors.InputError: the file is damaged (before scipy reads it).
    Whatever scipy raises on files it refuses without crashing (callers
    name the file).
  """
  check(path)
  return scipy.io.loadmat(os.fspath(path), **kwargs)
