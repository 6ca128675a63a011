r"""Human3.6M build throughput: sequential vs Beam workers (a benchmark, not a test).

  python -m benchmarks.build_benchmark --frames=300 --workers=2 \
      --release_dir=/tmp/h36m_bench_release --out=build_benchmark.json

Writes (once; reused when `--release_dir` already holds it) a full-resolution
fake Human3.6M release (datasets/human36m/fake_release.py: 4 cameras at
1000x1002 / 1000x1000, 50 fps, textured noisy frames, multi-take action
names, train subjects S1 S5 and test subject S9, `--frames` frames per
video), then measures in one run:

- `decode`: `human36m.read_frames` over every training video at
  train_every=5, once grabbing the skipped frames only (`cap.grab()`, what the
  build does) and once retrieving every frame (`grab()` + `retrieve()`, the
  named reference): frames decoded per second and the ratio of the two times;
- `sequential`: `registry.prepare` with data.beam_num_workers=0;
- `beam`: `registry.prepare` with data.beam_num_workers=`--workers`
  (DirectRunner, multi_processing);
- `beam_fixed` / `sequential_fixed`: the same two builds of three videos
  (S1 Walking and Walking 1, S9 Walking 1, camera 54138969): their
  difference is the Beam pipeline's fixed cost (worker start-up, TFDS writer
  stages), to report the speedup with and without it.

Frames decoded counts every frame the builds grab (up to the last one they
use). Prints a table and writes the JSON. The machine's load average is
recorded: on a shared machine the timings move with other jobs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import ml_collections
import numpy as np

from deepskeleton_jax.data import registry

_ACTIONS = {'S1': ('Walking', 'Walking 1', 'TakingPhoto'),
            'S5': ('Photo 2', 'WalkDog', 'SittingDown 2'),
            'S9': ('Walking 1', 'WalkTogether 1', 'Photo 1')}
_TRAIN, _TEST = ('S1', 'S5'), ('S9',)
_TRAIN_EVERY, _TEST_EVERY = 5, 64


def _write_one(args):
  root, subject, action, frames = args
  fake = registry.load_module('human36m', 'fake_release')
  fake.make_release(pathlib.Path(root), {subject: (action,)}, num_frames=frames,
                    textured=True)


def make_release(root: pathlib.Path, frames: int, processes: int = 2) -> float:
  """Writes the benchmark release (if not there); returns the seconds taken."""
  marker = root / f'.complete_{frames}'
  if marker.exists():
    return 0.0
  shutil.rmtree(root, ignore_errors=True)
  start = time.time()
  tasks = [(str(root), s, a, frames) for s, names in _ACTIONS.items() for a in names]
  with multiprocessing.get_context('spawn').Pool(processes) as pool:
    pool.map(_write_one, tasks)
  marker.write_text('ok')
  return time.time() - start


def _videos(root: pathlib.Path, subjects) -> list[pathlib.Path]:
  return sorted(p for s in subjects for p in (root / s / 'Videos').glob('*.mp4'))


def decode(root: pathlib.Path, frames: int) -> dict[str, Any]:
  """grab-only skipping vs grab+retrieve of every frame, same videos."""
  human36m = registry.load_module('human36m')
  wanted = np.arange(0, frames, _TRAIN_EVERY)
  times = {'grab_skipped': 0.0, 'retrieve_all': 0.0}
  count = 0
  for video in _videos(root, _TRAIN):
    for mode in (times if count % 2 == 0 else reversed(list(times))):
      start = time.perf_counter()
      n = sum(1 for _ in human36m.read_frames(
          video, wanted, frames, retrieve_all=mode == 'retrieve_all'))
      times[mode] += time.perf_counter() - start
      assert n == len(wanted), (video, n)
    count += 1
  grabbed = count * (int(wanted[-1]) + 1)
  return {'videos': count, 'frames_grabbed': grabbed,
          'frames_used': count * len(wanted), **{f'{k}_s': v for k, v in times.items()},
          'grab_skipped_fps': grabbed / times['grab_skipped'],
          'retrieve_all_fps': grabbed / times['retrieve_all'],
          'retrieve_all_over_grab_skipped': times['retrieve_all'] / times['grab_skipped']}


def _data_config(root, data_dir, workers, **kwargs) -> ml_collections.ConfigDict:
  kwargs = {'train_subjects': list(_TRAIN), 'test_subjects': list(_TEST),
            'train_every': _TRAIN_EVERY, 'test_every': _TEST_EVERY, **kwargs}
  return ml_collections.ConfigDict({
      'name': 'human36m', 'data_dir': str(data_dir), 'manual_dir': str(root),
      'builder_kwargs': kwargs, 'beam_num_workers': workers, 'beam_options': ''})


def build(root: pathlib.Path, workers: int, **kwargs) -> dict[str, Any]:
  """One build into a fresh data dir: wall seconds and examples per split."""
  data_dir = pathlib.Path(tempfile.mkdtemp(prefix='h36m_bench_data_'))
  try:
    start, cpu = time.time(), time.process_time()
    builder = registry.prepare(_data_config(root, data_dir, workers, **kwargs))
    wall = time.time() - start
    return {'workers': workers, 'wall_s': wall,
            'main_process_cpu_s': time.process_time() - cpu,
            'examples': {k: v.num_examples for k, v in builder.info.splits.items()}}
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)


def frames_grabbed(frames: int) -> int:
  """Frames a full build grabs: each video up to the last frame it uses."""
  per = {_TRAIN_EVERY: (frames - 1) // _TRAIN_EVERY * _TRAIN_EVERY + 1,
         _TEST_EVERY: (frames - 1) // _TEST_EVERY * _TEST_EVERY + 1}
  videos = lambda subjects: sum(len(_ACTIONS[s]) * 4 for s in subjects)
  return videos(_TRAIN) * per[_TRAIN_EVERY] + videos(_TEST) * per[_TEST_EVERY]


def run(release_dir: pathlib.Path, frames: int, workers: int) -> dict[str, Any]:
  result = {'load_average_start': os.getloadavg(), 'cpus': os.cpu_count(),
            'frames_per_video': frames,
            'release_write_s': make_release(release_dir, frames)}
  result['decode'] = decode(release_dir, frames)
  tiny = dict(actions=['Walking', 'Walking 1'], cameras=['54138969'],
              train_subjects=['S1'], test_subjects=['S9'])
  result['sequential'] = build(release_dir, 0)
  result['beam'] = build(release_dir, workers)
  result['sequential_fixed'] = build(release_dir, 0, **tiny)
  result['beam_fixed'] = build(release_dir, workers, **tiny)
  grabbed = frames_grabbed(frames)
  seq, beam = result['sequential']['wall_s'], result['beam']['wall_s']
  fixed = result['beam_fixed']['wall_s'] - result['sequential_fixed']['wall_s']
  result['summary'] = {
      'frames_grabbed_per_build': grabbed,
      'sequential_fps_per_worker': grabbed / seq,
      'beam_fps_per_worker': grabbed / beam / workers,
      'speedup': seq / beam,
      'beam_fixed_overhead_s': fixed,
      'speedup_without_fixed_overhead': seq / max(beam - fixed, 1e-9),
      'retrieve_all_over_grab_skipped': result['decode']['retrieve_all_over_grab_skipped'],
  }
  result['load_average_end'] = os.getloadavg()
  return result


def table(result: dict[str, Any]) -> str:
  s, d = result['summary'], result['decode']
  rows = [
      ('frames grabbed per build', f"{s['frames_grabbed_per_build']}"),
      ('sequential build', f"{result['sequential']['wall_s']:.1f} s, "
       f"{s['sequential_fps_per_worker']:.0f} frames/s per worker"),
      (f"Beam build, {result['beam']['workers']} workers",
       f"{result['beam']['wall_s']:.1f} s, {s['beam_fps_per_worker']:.0f} frames/s per worker"),
      ('speedup (end to end)', f"{s['speedup']:.2f}x"),
      ('Beam fixed overhead (3-video build)', f"{s['beam_fixed_overhead_s']:.1f} s"),
      ('speedup without the fixed overhead', f"{s['speedup_without_fixed_overhead']:.2f}x"),
      ('decode: grab-only skipping', f"{d['grab_skipped_fps']:.0f} frames/s"),
      ('decode: grab+retrieve every frame', f"{d['retrieve_all_fps']:.0f} frames/s"),
      ('retrieve-all time / grab-only time', f"{s['retrieve_all_over_grab_skipped']:.2f}x"),
      ('examples (sequential)', str(result['sequential']['examples'])),
      ('examples (Beam)', str(result['beam']['examples'])),
      ('load average start / end', f"{result['load_average_start'][0]:.1f} / "
       f"{result['load_average_end'][0]:.1f} on {result['cpus']} CPUs"),
  ]
  width = max(len(r[0]) for r in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv):
  del argv
  result = run(pathlib.Path(_RELEASE.value), _FRAMES.value, _WORKERS.value)
  print(table(result))
  pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=2))
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  # Flags only when run as a script (see rasterize_benchmark.py).
  _FRAMES = flags.DEFINE_integer('frames', 300, 'frames per fake video')
  _WORKERS = flags.DEFINE_integer('workers', 2, 'Beam DirectRunner workers')
  _RELEASE = flags.DEFINE_string('release_dir', '/tmp/h36m_bench_release',
                                 'where the fake release is written (reused)')
  _OUT = flags.DEFINE_string('out', 'build_benchmark.json', 'JSON output')
  app.run(main)
