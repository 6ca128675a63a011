"""Several batch iterators as one: the ensemble's members each read their own stream.

`StackedStreams` takes one batch from each of n iterators (the same split and
batch size, different shuffle seeds) and stacks every field along a new axis 1,
[b, n, ...]: column m is member m's batch. Its state (`get_state` /
`set_state`) is the list of the streams' own states, so a resumed run goes on
where each member stopped.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np


def stream_seed(seed: int, stream: int) -> int:
  """The shuffle seed of stream `stream` of a stage trained with `seed`.

  Args:
    seed: the stage's `train.seed`.
    stream: the member index.

  Returns:
    A 31-bit seed drawn from (seed, stream): distinct streams, distinct orders.
  """
  return int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1)[0] >> 1)


class StackedStreams(Iterator[dict[str, np.ndarray]]):
  """Batches of n iterators stacked along axis 1 ([b, n, ...] every field)."""

  def __init__(self, streams: Sequence[Any]):
    if not streams:
      raise ValueError('StackedStreams needs at least one stream')
    self._streams = tuple(streams)
    self.num_batches = None
    self.batch_size = streams[0].batch_size

  def __iter__(self) -> StackedStreams:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(s) for s in self._streams]
    return {k: np.stack([b[k] for b in batches], axis=1) for k in batches[0]}

  def get_state(self) -> dict[str, Any]:
    return {'streams': [s.get_state() for s in self._streams]}

  def set_state(self, state: dict[str, Any]) -> None:
    states = state['streams']
    if len(states) != len(self._streams):
      raise ValueError(f'the saved input state has {len(states)} streams, this run '
                       f'{len(self._streams)}')
    for s, st in zip(self._streams, states):
      s.set_state(st)
