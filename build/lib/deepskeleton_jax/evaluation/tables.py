"""Markdown tables in the layouts of the paper's tables (1, 2, 3-6, 8-10).

Every table takes {row name: values}; the first row is the reference that
later rows' changes ('↓12.3') are measured from, as the paper prints them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.evaluation.metrics import H36M_ACTIONS, PCKH_COLUMNS


def _fmt(value: float | None, precision: int) -> str:
  if value is None or not math.isfinite(value):
    return '-'
  return f'{value:.{precision}f}'


def _fmt_delta(value: float | None, base: float | None, precision: int) -> str:
  text = _fmt(value, precision)
  if value is None or base is None or not (math.isfinite(value) and
                                           math.isfinite(base)):
    return text
  # The difference of the printed values, so every row reads consistently.
  delta = round(round(value, precision) - round(base, precision), precision)
  arrow = '↑' if delta > 0 else '↓' if delta < 0 else '±'
  return f'{text}{arrow}{abs(delta):.{precision}f}'


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join([':---'] + ['---:'] * (len(header) - 1)) + '|']
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines)


def _grid(values: Mapping[str, Mapping[str, float]], columns: Sequence[str],
          split: bool, deltas: bool, precision: int) -> str:
  """Markdown table of rows x columns, optionally in two halves with deltas."""
  names = list(values)
  base = values[names[0]] if names else {}
  halves = ([columns[:(len(columns) + 1) // 2], columns[(len(columns) + 1) // 2:]]
            if split else [columns])
  tables = []
  for cols in halves:
    rows = []
    for i, name in enumerate(names):
      cells = [name]
      for c in cols:
        v = values[name].get(c)
        cells.append(_fmt_delta(v, base.get(c), precision) if deltas and i
                     else _fmt(v, precision))
      rows.append(cells)
    tables.append(_markdown(['Method'] + list(cols), rows))
  return '\n\n'.join(tables)


def per_action_table(errors_by_row: Mapping[str, Mapping[str, float]], *,
                     split: bool = True, deltas: bool = False,
                     precision: int = 1) -> str:
  """Markdown table in the layout of the paper's Table 1 (Table 6 with deltas).

  Args:
    errors_by_row: {method: {action: error}}; actions as table columns or raw
      Human3.6M names (mapped with `h36m_action_column`).
    split: two halves (Direction..Sit; SitDown..WalkTogether, Avg) as in the
      paper, or one wide table.
    deltas: append each cell's change from the first row ('↓4.8').
    precision: decimals.

  Returns:
    The Markdown text. Avg is the mean over the actions a row has (missing
    actions print '-'), unless the row gives its own 'Avg' (e.g. a mean pooled
    over all frames: the paper's own Table 1 row prints 86.5, while its 15
    printed actions average 86.3).
  """
  values = {}
  for name, row in errors_by_row.items():
    mapped = {}
    for action, value in row.items():
      if action == 'Avg':
        continue
      column = metrics.h36m_action_column(action)
      if column in mapped:
        raise ValueError(f'errors_by_row[{name!r}] has two entries for action '
                         f'{column}')
      mapped[column] = float(value)
    if 'Avg' in row:
      mapped['Avg'] = float(row['Avg'])
    else:
      mapped['Avg'] = (float(np.mean(list(mapped.values()))) if mapped
                       else math.nan)
    values[name] = mapped
  return _grid(values, H36M_ACTIONS + ('Avg',), split, deltas, precision)


def comparison_table(rows: Mapping[str, float], metric_name: str = 'Avg MPJPE',
                     *, precision: int = 1) -> str:
  """Markdown table in the layout of the paper's Table 2.

  Args:
    rows: {method: value}; the first row is the reference.
    metric_name: the value column's title.
    precision: decimals.

  Returns:
    The Markdown text, later rows with their change from the first ('↓12.3').
  """
  values = {name: {metric_name: float(v)} for name, v in rows.items()}
  return _grid(values, (metric_name,), False, True, precision)


def pckh_table(rows: Mapping[str, Mapping[str, Any]], *, split: bool = True,
               deltas: bool = True, precision: int = 1) -> str:
  """Markdown table in the layout of the paper's Table 8 (PCKh@0.5 groups).

  Args:
    rows: {method: pckh() result, or a dict keyed by `PCKH_COLUMNS` (e.g.
      published numbers)}; the first row is the reference for deltas.
    split: two halves (Head..Wri.; Hip..Mean) as in the paper, or one table.
    deltas: append each cell's change from the first row ('↑11.5').
    precision: decimals.

  Returns:
    The Markdown text.
  """
  values = {}
  for name, row in rows.items():
    if 'per_joint' in row:
      values[name] = metrics.pckh_groups(row)
    else:
      unknown = set(row) - set(PCKH_COLUMNS)
      if unknown:
        raise ValueError(f'rows[{name!r}] must be a pckh() result or have keys '
                         f'from {PCKH_COLUMNS}, got {sorted(unknown)}')
      values[name] = {k: float(v) for k, v in row.items()}
  return _grid(values, PCKH_COLUMNS, split, deltas, precision)


def generic_table(values_by_row: Mapping[str, Mapping[str, float]], *,
                  precision: int = 1) -> str:
  """Markdown table of {row: {column: value}} with an Avg (mean over columns).

  For per-action errors of datasets whose actions are not Human3.6M's (e.g.
  the synthetic set); columns in sorted order.

  Args:
    values_by_row: {method: {column: value}}.
    precision: decimals.

  Returns:
    The Markdown text; Avg is the mean over the row's columns unless the row
    gives its own 'Avg'.
  """
  columns = sorted({c for row in values_by_row.values() for c in row} - {'Avg'})
  values = {}
  for name, row in values_by_row.items():
    cells = {c: float(v) for c, v in row.items() if c != 'Avg'}
    if 'Avg' in row:
      cells['Avg'] = float(row['Avg'])
    else:
      cells['Avg'] = float(np.mean(list(cells.values()))) if cells else math.nan
    values[name] = cells
  return _grid(values, tuple(columns) + ('Avg',), False, False, precision)
