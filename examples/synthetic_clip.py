"""Writes a synthetic test video: one person walking across a cluttered scene.

  python -m examples.synthetic_clip walk.mp4 [--frames=60] [--seed=3] [--jitter_px=0]

Also writes `walk_truth.npz` (per frame `joints_2d` [T, 16, 2] frame pixels,
`joints_3d` [T, 16, 3] mm camera frame, `boxes` [T, 4]) and `walk_boxes.csv`
(the true boxes, one `x0 y0 x1 y1` row per frame, for
`--config.predict.boxes_file`). Run from the repository root.
"""

import argparse
import os

import numpy as np

from deepskeleton_jax.data import registry


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('out', help='video file to write (.mp4: mp4v, .avi: MJPG)')
  parser.add_argument('--frames', type=int, default=60)
  parser.add_argument('--height', type=int, default=192)
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--seed', type=int, default=3)
  parser.add_argument('--jitter_px', type=float, default=0.0, help='camera shake, pixels')
  args = parser.parse_args()
  video = registry.load_module('synthetic', 'synthetic_video')
  clip = video.render_clip(num_frames=args.frames, height=args.height, width=args.width,
                           seed=args.seed, jitter_px=args.jitter_px)
  video.write_video(args.out, clip.frames, clip.fps)
  stem = os.path.splitext(args.out)[0]
  np.savez(stem + '_truth.npz', joints_2d=clip.joints_2d, joints_3d=clip.joints_3d,
           boxes=clip.boxes)
  with open(stem + '_boxes.csv', 'w') as f:
    f.write('\n'.join(' '.join(f'{v:.2f}' for v in b) for b in clip.boxes) + '\n')
  print(f'{args.out}: {args.frames} frames of {args.width}x{args.height} at {clip.fps:g} fps; '
        f'first box: {" ".join(f"{v:.1f}" for v in clip.boxes[0])}')


if __name__ == '__main__':
  main()
