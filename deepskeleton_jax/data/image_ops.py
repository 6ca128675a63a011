"""Host-side image operations shared by dataset builders, input pipeline and predict.

Affines follow the continuous pixel convention of docs/DESIGN.md (pixel (i, j)
covers [j, j+1) x [i, i+1), centre (j + 0.5, i + 0.5)); OpenCV places pixel
centres at integers, so `warp_affine` converts between the two.
"""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
from PIL import Image

from deepskeleton_jax import errors


def to_opencv_affine(affine: np.ndarray) -> np.ndarray:
  """Converts a continuous-convention [2, 3] affine to OpenCV's convention.

  Args:
    affine: [2, 3] mapping source continuous pixels to destination ones.

  Returns:
    [2, 3] float64 affine for `cv2.warpAffine` (integer pixel centres).
  """
  a = np.asarray(affine, dtype=np.float64)
  lin, t = a[:, :2], a[:, 2]
  t = t + lin @ np.array([0.5, 0.5]) - 0.5
  return np.concatenate([lin, t[:, None]], axis=1)


def warp_affine(image: np.ndarray, affine: np.ndarray, size: int | tuple[int, int],
                interpolation: int = cv2.INTER_LINEAR,
                border_value: int = 0) -> np.ndarray:
  """Warps `image` into a new image through a source-to-destination affine.

  Args:
    image: [H, W, C] or [H, W] array.
    affine: [2, 3] source-to-destination affine (continuous convention).
    size: output side, or (height, width).
    interpolation: an OpenCV interpolation flag.
    border_value: fill for pixels outside the source.

  Returns:
    The warped image, [size, size, C] (or [h, w, C]).
  """
  h, w = (size, size) if isinstance(size, int) else size
  return cv2.warpAffine(image, to_opencv_affine(affine), (int(w), int(h)),
                        flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=border_value)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
  """Encodes an [H, W, 3] uint8 RGB array as JPEG bytes (no TensorFlow)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format='JPEG',
                                                           quality=quality)
  return buf.getvalue()


def decode_image(data: bytes, name: str = '<bytes>') -> np.ndarray:
  """Decodes encoded image bytes to an [H, W, 3] uint8 RGB array.

  Args:
    data: encoded JPEG/PNG bytes.
    name: used in the error message.

  Returns:
    [H, W, 3] uint8 RGB.

  Raises:
    errors.InputError: when the bytes are not a decodable image.
  """
  if not data:  # OpenCV asserts on an empty buffer instead of returning None.
    raise errors.InputError(f'{name}: empty file (0 bytes); expected a JPEG or PNG image')
  try:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  except cv2.error:  # a decoder that fails loudly rather than returning None
    arr = None
  if arr is None:  # IMREAD_COLOR gives 8-bit, 3 channels for anything it decodes
    raise errors.InputError(f'{name}: not a decodable image ({len(data)} bytes); expected '
                            'a JPEG or PNG image')
  return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as [H, W, 3] uint8 RGB, naming the file on failure."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise errors.InputError(f'{path}: cannot read image file ({e})') from e
  return decode_image(data, name=str(path))
