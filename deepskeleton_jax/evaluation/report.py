"""The evaluation report: `results.json` as Markdown in the paper's table layouts.

Sections, where the results have them: Table 2 (MPJPE of every comparison
row, 'Mean pose' first so a reader sees what learning bought), PA-MPJPE,
Table 1 (MPJPE per action), Tables 3 and 4 (ground-truth depth or 2D), each
hypothesis alone, Table 9 (Base, Ensemble, + Mul-S, + Mul-S + Mul-C), the
matching's choices, Table 8 (PCKh@0.5 per joint group), Table 10 (GT Ske)
and the 2D detections' pixel error.
"""

from __future__ import annotations

from typing import Any

from deepskeleton_jax.evaluation import scoring
from deepskeleton_jax.evaluation import tables


def _ordered(values: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
  return {k: values[k] for k in order if k in values}


def _mpjpe_sections(results: dict[str, Any], h36m: bool) -> list[str]:
  main = _ordered(results['mpjpe'], scoring.MAIN_ROWS)
  per_action = _ordered(results['mpjpe_per_action'], scoring.MAIN_ROWS)
  # Every row of the per-action table gives its own frame-weighted average.
  per_action = {k: {**v, 'Avg': results['mpjpe'][k]} for k, v in per_action.items()}
  action_table = (tables.per_action_table(per_action) if h36m else
                  tables.generic_table(per_action))
  lines = ['## MPJPE (mm, root-aligned; Table 2 layout)', '',
           tables.comparison_table(main), '',
           '## PA-MPJPE (mm, Procrustes-aligned)', '',
           tables.comparison_table(_ordered(results['pa_mpjpe'], scoring.MAIN_ROWS),
                                   'Avg PA-MPJPE'), '',
           '## MPJPE per action (mm; Table 1 layout; all frames of all takes of an '
           'action together; Avg over all frames)', '', action_table, '']
  for key, title in (('mpjpe_table3', 'Table 3: ground-truth depth, predicted 2D'),
                     ('mpjpe_table4', 'Table 4: ground-truth 2D, predicted depth')):
    if key in results:
      lines += [f'## {title} (MPJPE, mm; one hypothesis)', '',
                tables.comparison_table(results[key]), '']
  per_hyp = {k: v for k, v in results['mpjpe'].items() if k.startswith('hyp ')}
  if per_hyp:
    lines += ['## Each hypothesis alone (MPJPE, mm)', '', tables.comparison_table(per_hyp), '']
  table9 = _ordered(results['mpjpe'], scoring.TABLE9_ROWS)
  if len(table9) > 1:
    lines += ['## Table 9 layout (MPJPE, mm): Base, Ensemble, + Mul-S (stick widths at '
              'c = 1.0), + Mul-S + Mul-C (all)', '', tables.comparison_table(table9), '']
  return lines


def _pckh_sections(results: dict[str, Any]) -> list[str]:
  pckh = results['pckh']
  order = ('2D detections',) + scoring.MAIN_ROWS
  rows = {k: {'per_joint': v['per_joint'], 'mean': v['mean']}
          for k, v in _ordered(pckh, order).items()}
  persons = next(iter(pckh.values()))['persons']
  lines = ['## PCKh@0.5 (Table 8 layout)', '',
           f'{persons} persons with a head size. Mean: the MPII toolkit\'s total, all '
           'visible joints but pelvis and thorax pooled. 3D rows are placed in the '
           'image by a fit to the 2D detections.', '', tables.pckh_table(rows), '',
           '### Unweighted mean of the 14 joints (the "Mean" of bearpaw\'s published '
           'table)', '',
           tables.comparison_table({k: pckh[k]['mean_joints'] for k in rows}, 'Mean (14)'), '']
  table9 = {k: {'per_joint': v['per_joint'], 'mean': v['mean']}
            for k, v in _ordered(pckh, scoring.TABLE9_ROWS).items()}
  if len(table9) > 1:
    lines += ['## Table 9 layout (PCKh@0.5)', '', tables.pckh_table(table9), '']
  table10 = {k: {'per_joint': v['per_joint'], 'mean': v['mean']}
             for k, v in _ordered(pckh, ('Ours w/o Mul-Hyp', 'GT Ske w/o Mul-Hyp')).items()}
  if len(table10) == 2:
    lines += ['## Table 10 layout (PCKh@0.5): one predicted vs one ground-truth map', '',
              tables.pckh_table(table10), '']
  return lines


def markdown(results: dict[str, Any], dataset: str, split: str) -> str:
  """The Markdown report of `results` (from `evaluate.evaluate`).

  Args:
    results: the results dict.
    dataset: the dataset's name ('human36m' prints Table 1's action columns).
    split: the evaluated split.

  Returns:
    The report text.
  """
  lines = [f'# DeepSkeleton-JAX evaluation: {dataset} / {split}', '',
           f"{results['num_examples']} test examples; hypotheses (crop scale, stick "
           f"width): {results['hypotheses']}, base (w/o Mul-Hyp) = {results['base']}; "
           f"2D detections for matching: {results['detections']} "
           f"(weights: {results['matching_weights']}).", '']
  if 'mpjpe' in results:
    lines += _mpjpe_sections(results, dataset == 'human36m')
  for name, hist in results.get('choice_histogram', {}).items():
    lines += [f'{name}: hypothesis chosen {hist} times', '']
  if 'pckh' in results:
    lines += _pckh_sections(results)
  if 'error_2d_px' in results:
    lines += ['## 2D error (mean distance to the annotated joints, original-image pixels)',
              '', tables.comparison_table(results['error_2d_px'], 'Mean 2D error (px)'), '']
  return '\n'.join(lines)


def main_table(results: dict[str, Any]) -> str:
  """The Table 2 rows alone (what `--mode=all` prints at the end)."""
  if 'mpjpe' in results:
    return tables.comparison_table(_ordered(results['mpjpe'], scoring.MAIN_ROWS))
  rows = {k: {'per_joint': v['per_joint'], 'mean': v['mean']}
          for k, v in results.get('pckh', {}).items()}
  return tables.pckh_table(rows) if rows else '(no scores)'
