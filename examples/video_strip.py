"""Tiles evenly spaced frames of a video into one PNG (e.g. docs/video_strip.png).

  python examples/video_strip.py workdir/demo/predict/walk_overlay.mp4 docs/video_strip.png \
      [--num=4] [--rows=2]

Needs only OpenCV and NumPy.
"""

import argparse

import cv2
import numpy as np


def read_frames(path: str) -> list[np.ndarray]:
  """Every frame of a video (BGR, as OpenCV reads them)."""
  cap = cv2.VideoCapture(path)
  frames = []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(frame)
  cap.release()
  return frames


def tile(frames: list[np.ndarray], num: int, rows: int) -> tuple[np.ndarray, list[int]]:
  """`num` evenly spaced frames in `rows` rows (black where the grid is not full).

  Returns:
    (the image, the frame indices shown).
  """
  index = np.linspace(0, len(frames) - 1, num).round().astype(int).tolist()
  picks = [frames[i] for i in index]
  cols = -(-num // rows)
  picks += [np.zeros_like(picks[0])] * (rows * cols - len(picks))
  grid = [np.concatenate(picks[r * cols:(r + 1) * cols], axis=1) for r in range(rows)]
  return np.concatenate(grid, axis=0), index


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('video')
  parser.add_argument('png')
  parser.add_argument('--num', type=int, default=4, help='frames to show')
  parser.add_argument('--rows', type=int, default=2)
  args = parser.parse_args()
  frames = read_frames(args.video)
  if not frames:
    raise SystemExit(f'{args.video}: no frames')
  image, index = tile(frames, args.num, args.rows)
  cv2.imwrite(args.png, image)
  print(f'{args.png}: frames {index} of {len(frames)}')


if __name__ == '__main__':
  main()
