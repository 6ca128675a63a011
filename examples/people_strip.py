"""Runs a trained workdir on a synthetic two-person video and tiles its overlay into a PNG.

  python -m examples.people_strip workdir/demo docs/people_strip.png \
      [--source=keypoints|boxes|tracking] [--frames=40] [--num=4] [--rows=2]

Writes the clip of two people walking side by side (`examples/synthetic_clip.py
--people=2`) and its truth files under WORKDIR/people_strip/, runs
`--mode=predict` with the demo config and the chosen source of people (the
COCO-17 keypoints file written from the truth, the boxes file with ids, or
tracking with `max_people=2`), prints where each person's root is in camera
space, and tiles frames of `pair_overlay.mp4` (each id in its colour, every
person's 3D pose in the right panel) into the PNG. Run from the repository root.
"""

import argparse
import os

import cv2
import numpy as np

from configs import demo
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.inference import predict
from examples import synthetic_clip
from examples import video_strip


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdir')
  parser.add_argument('png')
  parser.add_argument('--source', choices=('keypoints', 'boxes', 'tracking'),
                      default='keypoints')
  parser.add_argument('--frames', type=int, default=40)
  parser.add_argument('--num', type=int, default=4, help='frames to show')
  parser.add_argument('--rows', type=int, default=2)
  args = parser.parse_args()
  out_dir = os.path.join(args.workdir, 'people_strip')
  os.makedirs(out_dir, exist_ok=True)
  paths = synthetic_clip.write_clip(os.path.join(out_dir, 'pair.mp4'), frames=args.frames,
                                    width=192, people=2)
  config = demo.get_config()
  config.predict.update(video=paths['video'], output_dir=out_dir)
  if args.source == 'keypoints':
    config.predict.keypoints_file = paths['keypoints']
  elif args.source == 'boxes':
    config.predict.boxes_file = paths['boxes']
  else:
    config.predict.max_people = 2
  result = predict.predict(config_lib.finalize(config), args.workdir)
  for person in result['people'].values():
    root = person.root_camera_mm[person.present]
    print(f'id {person.id}: {int(person.present.sum())} frames, root from '
          f'{np.round(root[0]).tolist()} to {np.round(root[-1]).tolist()} mm (camera frame)')
  image, index = video_strip.tile(video_strip.read_frames(result['paths']['overlay']),
                                  args.num, args.rows)
  cv2.imwrite(args.png, image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
  print(f'{args.png}: frames {index} of {result["num_frames"]} ({args.source})')


if __name__ == '__main__':
  main()
