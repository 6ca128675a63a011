"""grain input pipelines over the TFDS datasets (no TensorFlow).

One call, `make_iterator`, gives a process's stream of numpy batches:

- Sharding: every epoch is one permutation of the split's N examples (the
  identity without shuffling, else seeded by (seed, epoch) and equal on every
  process); process p of P reads positions [p N / P, (p + 1) N / P) of it, so
  the processes partition each epoch exactly (and see different examples in
  different epochs).
- Crops: the stored crop covers `crop_scale` (e.g. 1.5) x the person box;
  hypothesis scale c takes its central c / crop_scale part, resized to
  `input_size` by one `cv2.warpAffine` per scale, straight from the stored
  crop. Joints, intrinsics, head size and the input->image affine follow.
- Augmentation (off by default, as in the paper): random scale, rotation,
  horizontal flip (left/right joints swapped, 3D x mirrored) and colour, one
  draw per example shared by its crops, seeded by (seed, epoch, example) so a
  resumed run sees the same augmentations.
- Batches of `global_batch_size / process_count` examples with a leading
  batch dimension. With `drop_remainder=False` the last batch is padded and
  every batch has a `mask` [b] bool field (False on padding rows); every
  process yields the same number of batches (multi-host steps stay in step).
- Prefetching: threads in this process, or `data_config.worker_count` grain
  worker processes (these need absl flags parsed, i.e. run under `app.run`).
- Checkpointing: the iterator's `get_state()` / `set_state()` (grain's state,
  a small JSON-serialisable dict) resume exactly where a run stopped.

Batch fields (C = len(crop_scales), S = input_size): `image` [b, C, S, S, 3]
uint8, `joints_2d` [b, C, 16, 2] input px, `input_to_image` [b, C, 2, 3],
`intrinsics` [b, C, 4] input px, `head_size` [b, C] input px, `visible`
[b, 16] bool, `joints_3d` [b, 16, 3] mm, `has_3d` [b], `has_intrinsics` [b],
`index` [b] int32 (example index in the split, -1 on padding), `frame` [b]
int32 (the stored frame / person id), `mask` [b],
and str arrays `subject`, `action`, `camera`, `image_name` [b]. Skeleton maps
are rendered on the device by the train step, not here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import threading
import types
from typing import Any, Iterator

import chex
import grain
import numpy as np

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.data import registry
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.geometry import skeleton

K = skeleton.NUM_JOINTS
STRING_FIELDS = ('subject', 'action', 'camera', 'image_name')
# Augmentation ranges (used only when augmenting).
AUG_SCALE = 0.25          # box scale factor in exp(U(-a, a))
AUG_ROTATION_DEG = 30.0   # std of the in-plane rotation, clipped at 2 std
AUG_ROTATION_PROB = 0.4
AUG_FLIP_PROB = 0.5
AUG_COLOR = 0.2           # brightness/contrast/per-channel gain jitter
_OPEN_LOCK = threading.Lock()


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class _Augmentation:
  """One example's augmentation (the identity when not augmenting)."""
  scale: float = 1.0
  rotation_deg: float = 0.0
  flip: bool = False
  gain: np.ndarray | float = 1.0
  offset: np.float32 | float = 0.0
  perm: np.ndarray = dataclasses.field(default_factory=lambda: np.arange(K))

  @classmethod
  def draw(cls, rng: np.random.Generator | None) -> _Augmentation:
    """Random scale, rotation, flip and colour (the draw order is part of the seed contract)."""
    if rng is None:
      return cls()
    scale = float(np.exp(rng.uniform(-AUG_SCALE, AUG_SCALE)))
    rot = 0.0
    if rng.random() < AUG_ROTATION_PROB:
      rot = float(np.clip(rng.normal(0.0, AUG_ROTATION_DEG),
                          -2 * AUG_ROTATION_DEG, 2 * AUG_ROTATION_DEG))
    flip = bool(rng.random() < AUG_FLIP_PROB)
    gain = (rng.uniform(1 - AUG_COLOR, 1 + AUG_COLOR, size=3)
            * rng.uniform(1 - AUG_COLOR, 1 + AUG_COLOR)).astype(np.float32)
    offset = np.float32(rng.uniform(-AUG_COLOR, AUG_COLOR) * 64.0)
    perm = skeleton.flip_permutation() if flip else np.arange(K)
    return cls(scale, rot, flip, gain, offset, perm)


class ExampleTransform:
  """Decodes stored examples and cuts their crops at every crop scale.

  Fills rows of preallocated batch arrays (no per-example stacking).
  Picklable (grain worker processes receive a copy).
  """

  def __init__(self, crop_scales: tuple[float, ...], input_size: int,
               image_free_crop_size: int | None = None):
    """Initialises the transform.

    Args:
      crop_scales: hypothesis crop scales c_i (box side multiples).
      input_size: model input side S.
      image_free_crop_size: the nominal crop side of datasets that store no
        image (1x1 placeholder); their joints are in pixels of that crop.
    """
    self.crop_scales = np.asarray(crop_scales, np.float64).reshape(-1)
    self.input_size = int(input_size)
    self.image_free_crop_size = image_free_crop_size

  def empty_batch(self, size: int) -> dict[str, Any]:
    """Uninitialised batch arrays for `size` rows (str fields as lists)."""
    c, s = len(self.crop_scales), self.input_size
    return {
        'image': np.empty((size, c, s, s, 3), np.uint8),
        'joints_2d': np.zeros((size, c, K, 2), np.float32),
        'input_to_image': np.zeros((size, c, 2, 3), np.float32),
        'intrinsics': np.zeros((size, c, 4), np.float32),
        'head_size': np.zeros((size, c), np.float32),
        'visible': np.zeros((size, K), bool),
        'joints_3d': np.zeros((size, K, 3), np.float32),
        'has_3d': np.zeros((size,), bool),
        'has_intrinsics': np.zeros((size,), bool),
        'index': np.full((size,), -1, np.int32),
        'frame': np.zeros((size,), np.int32),
        'mask': np.zeros((size,), bool),
        **{k: [''] * size for k in STRING_FIELDS},
    }

  def fill_padding(self, out: dict[str, Any], row: int) -> None:
    """Makes `row` a padding row: zeros, index -1, mask False."""
    for k, v in out.items():
      if k in STRING_FIELDS:
        v[row] = ''
      else:
        v[row] = -1 if k == 'index' else 0

  def fill(self, out: dict[str, Any], row: int, example: dict[str, Any],
           index: int, rng: np.random.Generator | None = None) -> None:
    """Transforms one stored example into `row` of `out`.

    Args:
      out: batch arrays from `empty_batch`.
      row: the row to fill.
      example: a record of the data source (`image` as encoded bytes or an
        array).
      index: the example's index in the split.
      rng: augmentation randomness, or None for no augmentation.
    """
    chex.assert_shape([example['joints_2d'], example['visible'], example['joints_3d'],
                       example['intrinsics'], example['crop_to_image']],
                      [(K, 2), (K,), (K, 3), (4,), (2, 3)])
    image = example['image']
    if isinstance(image, bytes):
      image = image_ops.decode_image(image, name=f'example {index}')
    image_free = image.shape[0] <= 1
    if image_free and not self.image_free_crop_size:
      raise ValueError(f'example {index}: 1x1 placeholder image but the '
                       'builder config has no crop_size')
    crop_side = float(self.image_free_crop_size if image_free else image.shape[0])
    aug = _Augmentation.draw(rng)
    affines = self._affines(crop_side, float(example['crop_scale']), aug)
    for i, affine in enumerate(affines):
      out['image'][row, i] = 0 if image_free else image_ops.warp_affine(
          image, affine, self.input_size)
    if rng is not None and not image_free:
      out['image'][row] = np.clip(out['image'][row] * aug.gain + aug.offset, 0, 255)
    self._fill_labels(out, row, example, affines, aug.perm)
    out['index'][row] = index
    out['frame'][row] = int(example.get('frame', 0))
    out['mask'][row] = True
    for k in STRING_FIELDS:
      out[k][row] = _text(example[k])

  def _affines(self, crop_side: float, stored_scale: float, aug: _Augmentation) -> np.ndarray:
    """[C, 2, 3] stored crop -> input affines: per scale the central c / crop_scale part."""
    s, num = self.input_size, len(self.crop_scales)
    boxes = crop_side * self.crop_scales / stored_scale * aug.scale
    centers = np.full((num, 2), crop_side / 2.0, np.float32)
    affines = camera.crop_affine(centers, boxes.astype(np.float32), s,
                                 aug.rotation_deg).astype(np.float64)
    if aug.flip:  # x -> s - x after the crop.
      affines[:, 0] = -affines[:, 0]
      affines[:, 0, 2] += s
    return affines

  def _fill_labels(self, out, row, example, affines, perm) -> None:
    """Joints, intrinsics, head size and affines of one example, through `affines`."""
    num = len(affines)
    visible = np.asarray(example['visible'], bool)
    joints = camera.apply_affine(
        np.broadcast_to(np.asarray(example['joints_2d'], np.float64), (num, K, 2)),
        affines)
    out['joints_2d'][row] = np.where(visible[:, None], joints, 0.0)[:, perm]
    out['input_to_image'][row] = camera.compose_affine(
        np.broadcast_to(np.asarray(example['crop_to_image'], np.float64), (num, 2, 3)),
        camera.invert_affine(affines))
    lin = affines[:, :, :2]
    factor = np.sqrt(np.abs(np.linalg.det(lin)))
    has_intr = bool(example['has_intrinsics'])
    if has_intr:
      intr = np.asarray(example['intrinsics'], np.float64)
      out['intrinsics'][row, :, :2] = intr[:2] * factor[:, None]
      out['intrinsics'][row, :, 2:] = lin @ intr[2:] + affines[:, :, 2]
    else:
      out['intrinsics'][row] = 0
    out['head_size'][row] = float(example['head_size']) * factor
    # The crop's rotation/flip as a 3D rotation/mirror about the optical axis
    # keeps joints_3d consistent with the new intrinsics (exact for f_x == f_y).
    q = lin[0] / factor[0]
    joints_3d = np.asarray(example['joints_3d'], np.float64)
    joints_3d = np.concatenate([joints_3d[:, :2] @ q.T, joints_3d[:, 2:]], axis=1)
    out['joints_3d'][row] = joints_3d[perm]
    out['visible'][row] = visible[perm]
    out['has_3d'][row] = bool(example['has_3d'])
    out['has_intrinsics'][row] = has_intr

  def __call__(self, example: dict[str, Any], index: int,
               rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Transforms one example; returns a batch of one row without its batch axis."""
    out = self.empty_batch(1)
    self.fill(out, 0, example, index, rng)
    return {k: v[0] for k, v in out.items()}


@functools.lru_cache(maxsize=8)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the split's examples in one epoch: a pure function of its arguments.

  Cached (grain's prefetch threads read the plan concurrently; a cache miss
  in two threads at once computes the same array twice, harmlessly).
  """
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.setflags(write=False)
  return perm


class _EpochPlan(grain.MapDataset):
  """Position k of a process's stream -> (epoch, example index), -1 = padding.

  Stateless: entry k depends only on the constructor's arguments and k, so
  any number of threads may read it at once.
  """

  def __init__(self, num_examples: int, process_index: int, process_count: int,
               shuffle: bool, seed: int, num_epochs: int | None, length: int):
    super().__init__()
    self._n = num_examples
    self._start = process_index * num_examples // process_count
    self._local = (process_index + 1) * num_examples // process_count - self._start
    self._shuffle, self._seed = shuffle, seed
    self._num_epochs, self._length = num_epochs, length

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'_EpochPlan(n={self._n}, start={self._start}, local={self._local})'

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    if k >= self._length or self._local == 0:
      return (-1, -1)
    epoch, pos = divmod(k, self._local)
    if self._num_epochs is not None and epoch >= self._num_epochs:
      return (-1, -1)
    g = self._start + pos
    if not self._shuffle:
      return (epoch, g)
    return (epoch, int(epoch_permutation(self._n, self._seed, epoch)[g]))


class _SplitSource:
  """A split's data source, opened lazily in each process that reads it.

  Pickles as the dataset's name/data_dir/builder_kwargs only: grain worker
  processes re-open the dataset (its builder module is loaded by path, which
  a pickled TFDS source could not refer to).
  """

  def __init__(self, data_config: Any, split: str,
               source: Any | None = None):
    self._spec = types.SimpleNamespace(
        name=data_config.name, data_dir=getattr(data_config, 'data_dir', ''),
        builder_kwargs=registry.to_dict(getattr(data_config, 'builder_kwargs', None)))
    self._split = split
    self._source = source

  def _open(self):
    with _OPEN_LOCK:  # Prefetch threads share this object.
      if self._source is None:
        self._source = registry.split_source(
            registry.get_builder(self._spec), self._split, decode_image=False)
    return self._source

  def __getstate__(self):
    return {**self.__dict__, '_source': None}

  def __len__(self) -> int:
    return len(self._open())

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._open()[index]

  def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
    return self._open().__getitems__(indices)


class _LoadBatch:
  """A list of (epoch, index) plan entries -> one batch (padding for -1)."""

  def __init__(self, source, transform: ExampleTransform, augment: bool, seed: int):
    self._source, self._transform = source, transform
    self._augment, self._seed = augment, seed

  def __call__(self, entries: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    out = self._transform.empty_batch(len(entries))
    real = [(row, e, i) for row, (e, i) in enumerate(entries) if i >= 0]
    examples = self._source.__getitems__([i for _, _, i in real]) if real else []
    for row, (epoch, index) in enumerate(entries):
      if index < 0:
        self._transform.fill_padding(out, row)
    for (row, epoch, index), example in zip(real, examples):
      rng = (np.random.default_rng([self._seed, epoch, index, 0xA06])
             if self._augment else None)
      self._transform.fill(out, row, example, index, rng)
    for k in STRING_FIELDS:
      out[k] = np.asarray(out[k])
    return out


class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """Iterator of numpy batches with checkpointable state.

  A state restores into an iterator made with the same arguments and the
  same `data_config.worker_count` (the state's layout depends on it).

  Attributes:
    num_batches: batches per process until the iterator ends (None: endless).
    batch_size: examples per batch on this process.
  """

  def __init__(self, dataset: grain.IterDataset, num_batches: int | None,
               batch_size: int):
    self._iterator = iter(dataset)
    self.num_batches = num_batches
    self.batch_size = batch_size

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def get_state(self) -> dict[str, Any]:
    """grain's iterator state (JSON-serialisable); see `set_state`."""
    return self._iterator.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a state from `get_state`: the next batch is the one that followed."""
    self._iterator.set_state(state)


def make_iterator(data_config: Any, split: str, global_batch_size: int, *,
                  shuffle: bool = False, num_epochs: int | None = 1,
                  seed: int | None = None, process_index: int | None = None,
                  process_count: int | None = None, drop_remainder: bool = False,
                  augment: bool | None = None) -> BatchIterator:
  """The numpy batch iterator of one process over a split.

  Args:
    data_config: `config.data` (name, data_dir, builder_kwargs, crop_scales,
      input_size, augment, worker_count, seed).
    split: split name.
    global_batch_size: examples per step over all processes.
    shuffle: reshuffle every epoch.
    num_epochs: passes over the split; None repeats forever.
    seed: shuffling/augmentation seed (default `data_config.seed`); must be
      equal on every process.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    drop_remainder: drop the last incomplete batch instead of padding it.
    augment: default `data_config.augment and shuffle` (training streams).

  Returns:
    A `BatchIterator`.

  Raises:
    ValueError: bad batch size or process index, crop scales beyond the
      stored crop; `registry.DatasetNotBuiltError` if not built.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}), got {process_index}')
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size must be a positive multiple of '
                     f'process_count={process_count}, got {global_batch_size}')
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f'num_epochs must be None or >= 1, got {num_epochs}')
  batch = global_batch_size // process_count
  seed = int(data_config.seed if seed is None else seed)
  augment = bool(data_config.augment and shuffle) if augment is None else augment
  builder = registry.get_builder(data_config)
  source = _SplitSource(data_config, split,
                        registry.split_source(builder, split, decode_image=False))
  n = len(source)
  crop_scales = tuple(data_config.crop_scales)
  if n:
    stored = float(source[0]['crop_scale'])
    if max(crop_scales) > stored + 1e-6:
      raise ValueError(f'data.crop_scales {crop_scales} exceed the stored crop '
                       f'scale {stored} of {builder.name}: rebuild it with a '
                       'larger crop_scale')
  transform = ExampleTransform(
      crop_scales, data_config.input_size,
      image_free_crop_size=getattr(builder.builder_config, 'crop_size', None))
  if num_epochs is None:
    num_batches, length = None, sys.maxsize // max(batch, 1) * batch
    if n < process_count:
      raise ValueError(f'split {split!r} has {n} examples, fewer than '
                       f'{process_count} processes')
  elif drop_remainder:  # As many full batches as the smallest shard gives.
    num_batches = (n // process_count) * num_epochs // batch
    length = num_batches * batch
  else:  # Enough batches for the largest shard; the others pad.
    largest = -(-n // process_count) * num_epochs
    num_batches = -(-largest // batch)
    length = num_batches * batch
  plan = _EpochPlan(n, process_index, process_count, shuffle, seed, num_epochs, length)
  ds = plan.batch(batch, drop_remainder=False, batch_fn=list).map(
      _LoadBatch(source, transform, augment, seed))
  threads = max(1, min(4, os.cpu_count() or 1))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                               prefetch_buffer_size=threads + 1))
  workers = int(getattr(data_config, 'worker_count', 0) or 0)
  if workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return BatchIterator(it_ds, num_batches, batch)



class ChainedIterator(Iterator[dict[str, np.ndarray]]):
  """The first `num_first` batches of one iterator, then those of another.

  The state (`get_state` / `set_state`) records how many batches were taken
  and the active iterator's own state, so a run resumed in either phase goes
  on where it stopped. Both iterators must yield batches of equal shapes (a
  phase switch does not recompile the step).
  """

  def __init__(self, first: BatchIterator, num_first: int, second: BatchIterator):
    self._iterators = (first, second)
    self._num_first = int(num_first)
    self._taken = 0
    self.num_batches = None
    self.batch_size = second.batch_size

  def __iter__(self) -> ChainedIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterators[self._phase])
    self._taken += 1
    return batch

  @property
  def _phase(self) -> int:
    return int(self._taken >= self._num_first)

  def get_state(self) -> dict[str, Any]:
    return {'taken': self._taken, 'active': self._iterators[self._phase].get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._taken = int(state['taken'])
    self._iterators[self._phase].set_state(state['active'])
