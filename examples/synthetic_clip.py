"""Writes a synthetic test video: people walking across a cluttered scene.

  python -m examples.synthetic_clip walk.mp4 [--frames=60] [--seed=3] [--jitter_px=0]
  python -m examples.synthetic_clip pair.mp4 --people=2     # two clips side by side

Also writes `walk_truth.npz` (per person and frame `joints_2d` [P, T, 16, 2]
frame pixels, `joints_3d` [P, T, 16, 3] mm in each clip's camera frame,
`boxes` [P, T, 4], `intrinsics` [P, T, 4] of each clip's own camera;
P = 1 for one person), `walk_boxes.csv` (the true boxes for
`--config.predict.boxes_file`: one `x0 y0 x1 y1` row per frame for one
person, rows `frame id x0 y0 x1 y1` for several) and `walk_keypoints.json`
(COCO-17 keypoints of the truth for `--config.predict.keypoints_file`, as a
top-down tool writes them, without track ids). Run from the repository root.
"""

import argparse
import json
import os

import numpy as np

from deepskeleton_jax.data import registry


def write_clip(out: str, frames: int = 60, height: int = 192, width: int = 256,
               seed: int = 3, jitter_px: float = 0.0, people: int = 1) -> dict[str, str]:
  """Renders the clip (`people` clips side by side) and writes it with its truth.

  Returns:
    {'video', 'truth', 'boxes', 'keypoints'}: the paths written.
  """
  video = registry.load_module('synthetic', 'synthetic_video')
  clips = [video.render_clip(num_frames=frames, height=height, width=width, seed=seed + p,
                             jitter_px=jitter_px) for p in range(people)]
  group = video.side_by_side(clips)
  video.write_video(out, group.frames, group.fps)
  stem = os.path.splitext(out)[0]
  paths = {'video': out, 'truth': stem + '_truth.npz', 'boxes': stem + '_boxes.csv',
           'keypoints': stem + '_keypoints.json'}
  np.savez(paths['truth'], joints_2d=group.joints_2d,
           joints_3d=np.stack([c.joints_3d for c in clips]), boxes=group.boxes,
           intrinsics=np.stack([c.intrinsics for c in clips]))
  fmt = lambda b: ' '.join(f'{v:.2f}' for v in b)  # pylint: disable=unnecessary-lambda-assignment
  rows = ([fmt(b) for b in group.boxes[0]] if people == 1 else
          [f'{t} {p} {fmt(group.boxes[p, t])}' for t in range(frames) for p in range(people)])
  with open(paths['boxes'], 'w') as f:
    f.write('\n'.join(rows) + '\n')
  keypoints = video.coco17_2d(group.joints_2d, group.face_2d) - 0.5  # COCO pixel indices
  entries = [{'image_id': t, 'category_id': 1, 'score': 1.0,
              'keypoints': np.concatenate([keypoints[p, t], np.ones((17, 1))], 1)
                             .round(2).ravel().tolist()}
             for t in range(frames) for p in range(people)]
  with open(paths['keypoints'], 'w') as f:
    json.dump(entries, f)
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('out', help='video file to write (.mp4: mp4v, .avi: MJPG)')
  parser.add_argument('--frames', type=int, default=60)
  parser.add_argument('--height', type=int, default=192)
  parser.add_argument('--width', type=int, default=256, help='per person')
  parser.add_argument('--seed', type=int, default=3, help='person p gets seed + p')
  parser.add_argument('--jitter_px', type=float, default=0.0, help='camera shake, pixels')
  parser.add_argument('--people', type=int, default=1, help='clips side by side')
  args = parser.parse_args()
  paths = write_clip(args.out, args.frames, args.height, args.width, args.seed,
                     args.jitter_px, args.people)
  truth = np.load(paths['truth'])
  print(f'{args.out}: {args.frames} frames of {args.width * args.people}x{args.height}, '
        f'{args.people} people; first box: {" ".join(f"{v:.1f}" for v in truth["boxes"][0, 0])}; '
        f'also {paths["boxes"]}, {paths["keypoints"]}, {paths["truth"]}')


if __name__ == '__main__':
  main()
