"""Builds TFDS splits from units of work, sequentially or with Apache Beam.

The human36m, mpii and bvh_mocap builders describe their work as a list of
picklable *units* (one video, one shard of images, one BVH file) and one
module-level function `process(unit)` that yields `(split, key, example)`
tuples, and optionally side records `side(kind, value)` (counts, checks,
skipped files) that the builder summarises after the build.

- Sequential build (no Beam options): the units run in this process, in order,
  with no apache-beam import. A unit that writes several splits (a Human3.6M
  training video feeds `train` and `holdout`) runs once; the examples of its
  later splits are spilled to a temporary folder until TFDS asks for them.
- Beam build (`DownloadConfig(beam_options=...)`, set by `registry.prepare`
  from `data.beam_num_workers` / `data.beam_options`): every split generator
  is a PTransform over one shared `beam.Create(units) | beam.FlatMap(process)`
  collection, so each unit also runs once; side records are gathered into a
  JSON file in the build's (incomplete) data directory and read back after
  the pipeline.

Either way a unit's output is complete or absent: `run_unit` materialises it,
so a file found bad half way contributes nothing.

Bad files: `process` raises `BadFileError(path, reason)` for a file it cannot
read. With `strict=False` the unit is dropped, the file is logged and listed
(`skipped_files` side records); with `strict=True` the error propagates (in a
Beam build, inside the pipeline's error; `registry.prepare` turns it back into
an `errors.InputError` naming the file).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator, Sequence

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from deepskeleton_jax import errors
from deepskeleton_jax.data import example_format

SIDE = '__side__'
SKIPPED = 'skipped_files'
_SIDE_FILE = 'side_records.{name}.json'


class BadFileError(errors.InputError):
  """A dataset file that cannot be read (skipped unless the build is strict)."""

  def __init__(self, path: Any, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f'{path}: {reason}')

  def __reduce__(self):  # Beam pickles errors raised in its workers.
    return type(self), (self.path, self.reason)


def side(kind: str, value: Any) -> tuple[str, str, Any]:
  """A side record (JSON-serialisable `value`) for the builder's summary."""
  return (SIDE, kind, value)


def skip(path: Any, reason: str) -> tuple[str, str, Any]:
  """Logs a bad file skipped by a non-strict build; its `skipped_files` side record.

  Args:
    path: the file.
    reason: what is wrong with it.

  Returns:
    The side record (value [path, reason]).
  """
  logging.warning('skipping %s (strict=False): %s', path, reason)
  return side(SKIPPED, [str(path), reason])


def run_unit(process: Callable[[Any], Iterable[tuple]], strict: bool,
             unit: Any) -> list[tuple]:
  """All outputs of one unit, or a `skipped_files` record for a bad file.

  Args:
    process: the builder's unit function.
    strict: re-raise `BadFileError` instead of skipping the unit.
    unit: one unit of work.

  Returns:
    The unit's `(split, key, example)` tuples and side records.
  """
  try:
    return list(process(unit))
  except BadFileError as e:
    if strict:
      raise
    return [skip(e.path, e.reason)]


def dataset_info(builder: tfds.core.DatasetBuilder, **kwargs
                 ) -> tfds.core.DatasetInfo:
  """`example_format`'s DatasetInfo with a metadata dict (for the summary)."""
  return tfds.core.DatasetInfo(builder=builder, features=example_format.features(),
                               metadata=tfds.core.MetadataDict(), **kwargs)


class BeamAware:
  """Mixin for a GeneratorBasedBuilder: records whether the build uses Beam.

  Sets `self._use_beam` before `_split_generators` runs and calls
  `self._summarize(records)` (records: kind -> list of values of the side
  records of every unit) after all splits are written, before TFDS writes
  the dataset info, so the summary can go into `self.info.metadata`.
  """

  _use_beam = False
  _unit_build: 'UnitBuild | None' = None

  def _download_and_prepare(self, dl_manager, download_config):
    self._use_beam = (download_config.beam_runner is not None or
                      download_config.beam_options is not None)
    super()._download_and_prepare(dl_manager, download_config)  # pytype: disable=attribute-error
    if self._unit_build is not None:
      records = self._unit_build.side_records()
      skipped = sorted({path for path, _ in records.pop(SKIPPED, [])})
      self.info.metadata[SKIPPED] = skipped  # pytype: disable=attribute-error
      if skipped:
        logging.warning('%s: skipped %d bad files: %s', self.name, len(skipped),
                        ', '.join(skipped))
      self._summarize(records)

  def _summarize(self, records: dict[str, list[Any]]) -> None:
    del records

  def _units(self, name: str, units: Sequence[Any], process: Callable,
             splits: Sequence[str], strict: bool) -> dict[str, Any]:
    """`_split_generators`' result for `units` (see `UnitBuild`)."""
    self._unit_build = UnitBuild(
        name, units, process, splits=splits, strict=strict,
        use_beam=self._use_beam,
        side_dir=self.data_dir)  # pytype: disable=attribute-error
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split: str):
    """A generator of (key, example) (sequential build), or a Beam PTransform
    (`beam.Create(units) | beam.FlatMap(process)`, shared by the splits)."""
    return self._unit_build.split_generator(split)


class UnitBuild:
  """The splits of one build: every unit runs once (see the module docstring).

  Each unit has an attribute `splits` (the splits its examples go to, in the
  order of `splits` here).
  """

  def __init__(self, name: str, units: Sequence[Any], process: Callable,
               *, splits: Sequence[str], strict: bool, use_beam: bool,
               side_dir: Any):
    self.name = name
    self.units = list(units)
    self.process = process
    self.splits = tuple(splits)
    self.strict = strict
    self.use_beam = use_beam
    self._side_path = epath.Path(side_dir) / _SIDE_FILE.format(name=name)
    self._records: list[tuple[str, Any]] = []
    # Sequential build: unit index -> its skipped files' [path, reason].
    self._skipped: dict[int, list[list[str]]] = collections.defaultdict(list)
    self._spill_dir: str | None = None
    self._shared = None  # The Beam PCollection of all unit outputs.
    for unit in self.units:
      unknown = set(unit.splits) - set(self.splits)
      if unknown:
        raise ValueError(f'unit {unit} names unknown splits {unknown}')

  def split_generator(self, split: str):
    """The generator (sequential) or PTransform (Beam) of one split."""
    if self.use_beam:
      return self._beam_split(split)
    return self._sequential_split(split)

  def side_records(self) -> dict[str, list[Any]]:
    """kind -> values of every side record (after the build)."""
    records = self._records
    if self.use_beam:
      records = json.loads(self._side_path.read_text()) if self._side_path.exists() else []
      self._side_path.unlink(missing_ok=True)
    out = collections.defaultdict(list)
    for kind, value in records:
      out[kind].append(value)
    return dict(out)

  # Sequential build.

  def _sequential_split(self, split: str) -> Iterator[tuple[str, Any]]:
    done = False
    num_examples = 0
    try:
      for index, unit in enumerate(self.units):
        if split not in unit.splits:
          continue
        if split == next(s for s in self.splits if s in unit.splits):
          examples = self._run_and_spill(index, unit, split)
        else:
          examples = self._unspill(index, split)
        for example in examples:
          num_examples += 1
          yield example
      if not num_examples:
        raise self._empty_split_error(split)
      done = True
    finally:
      if not done or split == self.splits[-1]:
        self._cleanup()

  def _empty_split_error(self, split: str) -> errors.InputError:
    """A split without examples (TFDS would fail on it): its skipped files named."""
    units = [i for i, unit in enumerate(self.units) if split in unit.splits]
    skipped = [f'{path} ({reason})' for i in units for path, reason in self._skipped[i]]
    if skipped:
      why = (f'its only {"file was" if len(skipped) == 1 else "files were"} skipped as bad '
             f'(strict=False): {"; ".join(skipped)}; fix or replace '
             f'{"it" if len(skipped) == 1 else "them"}, or give the split other files')
    else:
      why = (f'none of its {len(units)} units of work (files, videos or image shards) gave '
             'a valid example (see the counts of rejected examples above)')
    return errors.InputError(f'{self.name}: split {split!r} has no examples: {why}')

  def _run_and_spill(self, index: int, unit: Any, split: str):
    later = collections.defaultdict(list)
    for item in run_unit(self.process, self.strict, unit):
      if item[0] == SIDE and item[1] == SKIPPED:
        self._skipped[index].append(item[2])
      if item[0] == SIDE:
        self._records.append((item[1], item[2]))
      elif item[0] == split:
        yield item[1], item[2]
      else:
        later[item[0]].append((item[1], item[2]))
    for other in unit.splits:
      if other != split:
        self._spill(index, other, later.get(other, []))

  def _spill_path(self, index: int, split: str) -> str:
    if self._spill_dir is None:
      self._spill_dir = tempfile.mkdtemp(prefix=f'{self.name}_spill_')
    return os.path.join(self._spill_dir, f'{index}.{split}.pkl')

  def _spill(self, index: int, split: str, examples: list) -> None:
    with open(self._spill_path(index, split), 'wb') as f:
      pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)

  def _unspill(self, index: int, split: str):
    path = self._spill_path(index, split)
    if not os.path.exists(path):  # The unit was skipped as a bad file.
      return
    with open(path, 'rb') as f:
      examples = pickle.load(f)
    os.remove(path)
    yield from examples

  def _cleanup(self) -> None:
    if self._spill_dir is not None:
      shutil.rmtree(self._spill_dir, ignore_errors=True)
      self._spill_dir = None

  # Beam build.

  def _beam_split(self, split: str):
    import apache_beam as beam  # pylint: disable=g-import-not-at-top

    build = self

    class _Split(beam.PTransform):

      def expand(self, pbegin):
        shared = build._all_outputs(pbegin)  # pylint: disable=protected-access
        return (shared
                | f'Select_{split}' >> beam.Filter(_in_split, split)
                | f'Drop_split_{split}' >> beam.Map(_key_example))

    return _Split()

  def _all_outputs(self, pbegin):
    """The shared PCollection of all unit outputs (made by the first split)."""
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    if self._shared is None or self._shared.pipeline is not pbegin.pipeline:
      outputs = (pbegin.pipeline
                 | f'{self.name}_units' >> beam.Create(self.units)
                 | f'{self.name}_process' >> beam.FlatMap(
                     _run_unit_element, self.process, self.strict))
      _ = (outputs
           | f'{self.name}_side' >> beam.Filter(_in_split, SIDE)
           | f'{self.name}_side_values' >> beam.Map(lambda r: (r[1], r[2]))
           | f'{self.name}_side_list' >> beam.combiners.ToList()
           | f'{self.name}_side_write' >> beam.Map(_write_json,
                                                   str(self._side_path)))
      self._shared = outputs
    return self._shared


def _run_unit_element(unit: Any, process: Callable, strict: bool) -> list[tuple]:
  return run_unit(process, strict, unit)


def _in_split(item: tuple, split: str) -> bool:
  return item[0] == split


def _key_example(item: tuple) -> tuple[str, Any]:
  return item[1], item[2]


def _write_json(records: list, path: str) -> None:
  epath.Path(path).write_text(json.dumps(records))
