"""Reading a user's video (a file or a folder of frames) and checking person boxes.

Everything that can be wrong with the video is found here, before any
network runs or any output file is created, and raised as one clear
`errors.InputError` naming the file and what was expected: a file OpenCV
cannot open, a video or folder without frames, frames of differing sizes.
Boxes and keypoints files are read by `people_io.py`.

Boxes are `x0 y0 x1 y1` in frame pixels (continuous convention, docs/DESIGN.md).
"""

from __future__ import annotations

import math
import os
from typing import Iterator

from absl import logging
import cv2
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax.data import image_ops

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


class FrameSource:
  """The frames of a video file or of a folder of image files (sorted by name).

  Attributes:
    path: the video file or folder.
    num_frames: number of frames (counted by decoding, not from the header).
    height, width: frame size in pixels.
    fps: frame rate: the file's, or `default_fps` for a folder (or a file
      that gives none).
  """

  def __init__(self, path: str, default_fps: float):
    """Opens the source and counts its frames.

    Args:
      path: a video file OpenCV reads, or a folder of frames.
      default_fps: frame rate of a folder of frames.

    Raises:
      errors.InputError: no such path, unreadable, or no frames.
    """
    self.path = path
    self._files = None
    if os.path.isdir(path):
      self._files = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
      if not self._files:
        raise errors.InputError(f'{path}: the folder has no frames; expected image files '
                                f'({", ".join(IMAGE_EXTENSIONS)}), one per frame, in name order')
      self.num_frames, self.fps = len(self._files), float(default_fps)
      self.height, self.width = image_ops.read_image(self._files[0]).shape[:2]
      return
    if not os.path.isfile(path):
      raise errors.InputError(f'{path}: no such file or folder; expected a video file '
                              'OpenCV reads or a folder of frames')
    cap = self._open()
    try:
      fps = cap.get(cv2.CAP_PROP_FPS)
      ok, first = cap.read()
      count = int(ok)
      while ok and cap.grab():
        count += 1
    finally:
      cap.release()
    if count == 0:
      raise errors.InputError(f'{path}: the video has no frames; expected a video with at '
                              'least one frame')
    self.num_frames = count
    self.height, self.width = first.shape[:2]
    if not (math.isfinite(fps) and fps > 0):
      logging.warning('%s gives no frame rate: using config.predict.fps=%s', path, default_fps)
      fps = default_fps
    self.fps = float(fps)

  def _open(self) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(self.path)
    if not cap.isOpened():
      cap.release()
      raise errors.InputError(
          f'{self.path}: OpenCV cannot read this video (not a video, damaged, or a codec '
          'OpenCV lacks); expected a video file OpenCV reads (e.g. .mp4, .avi) or a '
          'folder of frames')
    return cap

  @property
  def is_folder(self) -> bool:
    """Whether the source is a folder of frames."""
    return self._files is not None

  def frames(self) -> Iterator[np.ndarray]:
    """Yields the frames in order as [H, W, 3] uint8 RGB (a fresh pass each call).

    Raises:
      errors.InputError: a frame cannot be decoded or differs in size.
    """
    if self._files is not None:
      for path in self._files:
        frame = image_ops.read_image(path)
        if frame.shape[:2] != (self.height, self.width):
          raise errors.InputError(
              f'{path}: frame of {frame.shape[1]}x{frame.shape[0]} pixels; expected every '
              f'frame of {self.path} to be {self.width}x{self.height} like the first')
        yield frame
      return
    cap = self._open()
    try:
      for index in range(self.num_frames):
        ok, frame = cap.read()
        if not ok:
          raise errors.InputError(f'{self.path}: frame {index} cannot be decoded (the file '
                                  f'has {self.num_frames} frames)')
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
      cap.release()


def check_box(box: np.ndarray, height: int, width: int, what: str = 'frame') -> str | None:
  """Why a box is not a person box in a `width` x `height` frame, or None.

  A box must have finite x1 > x0, y1 > y0 and its centre inside the frame (it
  may reach past the border: crops are padded). Image and video prediction
  both check their boxes with this.

  Args:
    box: [4] x0 y0 x1 y1.
    height, width: the frame or image.
    what: 'frame' or 'image', for the message.

  Returns:
    The problem, or None for a good box.
  """
  if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
    return 'expected x0 y0 x1 y1 (finite numbers) with x1 > x0 and y1 > y0'
  cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
  if not (0 <= cx <= width and 0 <= cy <= height):
    return (f'it lies outside the {width}x{height} {what}; expected a box in {what} pixels '
            f'whose centre is inside the {what}')
  return None
