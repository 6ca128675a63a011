"""Tiles evenly spaced frames of a video into one PNG (e.g. docs/video_strip.png).

  python examples/video_strip.py workdir/demo/predict/walk_overlay.mp4 docs/video_strip.png \
      [--num=4] [--rows=2]

Needs only OpenCV and NumPy.
"""

import argparse

import cv2
import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('video')
  parser.add_argument('png')
  parser.add_argument('--num', type=int, default=4, help='frames to show')
  parser.add_argument('--rows', type=int, default=2)
  args = parser.parse_args()
  cap = cv2.VideoCapture(args.video)
  frames = []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(frame)
  cap.release()
  if not frames:
    raise SystemExit(f'{args.video}: no frames')
  picks = [frames[i] for i in np.linspace(0, len(frames) - 1, args.num).round().astype(int)]
  cols = -(-args.num // args.rows)
  picks += [np.zeros_like(picks[0])] * (args.rows * cols - len(picks))
  rows = [np.concatenate(picks[r * cols:(r + 1) * cols], axis=1) for r in range(args.rows)]
  cv2.imwrite(args.png, np.concatenate(rows, axis=0))
  print(f'{args.png}: frames {np.linspace(0, len(frames) - 1, args.num).round().astype(int).tolist()}'
        f' of {len(frames)}')


if __name__ == '__main__':
  main()
