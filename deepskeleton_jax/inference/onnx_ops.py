"""ONNX rules for the structured lax primitives (see `onnx_convert.py`).

- `conv_general_dilated`: the operands are transposed to ONNX's channels-first
  layout ([N, C, spatial...], weights [O, I, spatial...]) and back; a
  transposed convolution (`lhs_dilation` > 1, as `nn.ConvTranspose` traces)
  is ONNX `ConvTranspose` with the spatially flipped kernel: the correlation
  of the s-dilated input padded by P = d (k - 1) on each side equals
  `ConvTranspose` with stride s, and lax's padding (lo, hi) crops that full
  output by (P - lo, P - hi).
- `reduce_window_max` / `reduce_window_sum`: the windowed axes are moved
  last, the others folded into ONNX's batch axis, then `MaxPool` (padding
  never wins, as lax's -inf) or a convolution with a kernel of ones (zero
  padding, as lax's 0).
- `gather`: ONNX `GatherND` (with `batch_dims` for lax's batching
  dimensions) on the start indices expanded over the slice windows, clamped
  so that the slice fits as lax does (`fill_value` where a start was out of
  bounds in mode FILL_OR_DROP); the dimensions that are not indexed must be
  taken whole (all the forms jnp's indexing and `take_along_axis` produce).
- `scatter-add` (the gradient of such a gather, as render-and-compare's
  refinement traces): ONNX `ScatterND` with `reduction='add'` (repeated
  indices accumulate), when every indexed dimension is inserted (one element
  per index) and the others are updated whole; an out-of-bounds index adds
  nothing (its update is zeroed and the index clamped), as lax drops it.
- `dot_general`: `MatMul` for a dense layer, else `Einsum`.
- `pad` (negative padding crops), reductions, arg-min/max, cumulative sums.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from onnx import TensorProto

from deepskeleton_jax.inference import onnx_convert as oc

_INT64_MAX = np.iinfo(np.int64).max


def _conv_transposed(b: oc.Builder, eqn, x: str, w: str, pads) -> str:
  """lax convolution with lhs_dilation as ONNX ConvTranspose ([N, C, ...] in and out)."""
  p = eqn.params
  if any(s != 1 for s in p['window_strides']) or p['feature_group_count'] != 1:
    raise oc.unsupported(eqn, 'lhs_dilation with window strides or feature groups')
  kernel = [eqn.invars[1].aval.shape[i] for i in p['dimension_numbers'].rhs_spec[2:]]
  full = [d * (k - 1) for d, k in zip(p['rhs_dilation'], kernel)]
  crop = [f - lo for f, (lo, _) in zip(full, pads)] + [f - hi for f, (_, hi) in zip(full, pads)]
  n = len(kernel)
  spatial = list(range(2, 2 + n))
  w = b.op('Transpose', [w], perm=[1, 0] + spatial)  # [I, O, ...]
  w = b.op('Slice', [w, b.ints([-1] * n), b.ints([np.iinfo(np.int64).min] * n),
                     b.ints(spatial), b.ints([-1] * n)])
  y = b.op('ConvTranspose', [x, w], strides=[int(s) for s in p['lhs_dilation']],
           dilations=[int(d) for d in p['rhs_dilation']], pads=[max(0, c) for c in crop])
  if any(c < 0 for c in crop):
    y = b.op('Pad', [y, b.ints([0, 0] + [max(0, -c) for c in crop[:n]] + [0, 0]
                                + [max(0, -c) for c in crop[n:]])], mode='constant')
  return y


def _crop_negative(b: oc.Builder, x: str, pads, first_axis: int) -> tuple[str, list]:
  """Negative lax padding (lo, hi) of axes first_axis... crops x; returns the rest."""
  crop = [(first_axis + i, lo, hi) for i, (lo, hi) in enumerate(pads) if lo < 0 or hi < 0]
  if crop:
    x = b.op('Slice', [x, b.ints([max(0, -lo) for _, lo, _ in crop]),
                       b.ints([hi if hi < 0 else _INT64_MAX for _, _, hi in crop]),
                       b.ints([a for a, _, _ in crop])])
  return x, [(max(0, lo), max(0, hi)) for lo, hi in pads]


def _conv(b: oc.Builder, eqn, ins):
  p = eqn.params
  dn = p['dimension_numbers']
  if p['batch_group_count'] != 1:
    raise oc.unsupported(eqn, 'batch_group_count > 1')
  pads = [(int(lo), int(hi)) for lo, hi in p['padding']]
  x = b.transpose(ins[0], dn.lhs_spec)
  w = b.transpose(ins[1], dn.rhs_spec)
  out_dtype = eqn.outvars[0].aval.dtype
  if np.dtype(eqn.invars[0].aval.dtype) != np.dtype(out_dtype):
    x = b.op('Cast', [x], to=oc.onnx_dtype(out_dtype))
    w = b.op('Cast', [w], to=oc.onnx_dtype(out_dtype))
  if any(d != 1 for d in p['lhs_dilation']):
    y = _conv_transposed(b, eqn, x, w, pads)
  else:
    x, pads = _crop_negative(b, x, pads, first_axis=2)
    y = b.op('Conv', [x, w], strides=[int(s) for s in p['window_strides']],
             dilations=[int(d) for d in p['rhs_dilation']],
             pads=[lo for lo, _ in pads] + [hi for _, hi in pads],
             group=int(p['feature_group_count']))
  return [b.transpose(y, np.argsort(dn.out_spec))]


def _reduce_window(b: oc.Builder, eqn, ins):
  p = eqn.params
  shape = eqn.invars[0].aval.shape
  if any(d != 1 for d in p['base_dilation']):
    raise oc.unsupported(eqn, 'base_dilation')
  pads = [(int(lo), int(hi)) for lo, hi in p['padding']]
  windowed = [i for i in range(len(shape))
              if (p['window_dimensions'][i], p['window_strides'][i], pads[i],
                  p['window_dilation'][i]) != (1, 1, (0, 0), 1)]
  if not windowed:
    return [b.op('Identity', ins)]
  if any(lo < 0 or hi < 0 for lo, hi in pads) or not all(oc.is_int(shape[i]) for i in windowed):
    raise oc.unsupported(eqn, 'negative padding or symbolic windowed dimensions')
  perm = [i for i in range(len(shape)) if i not in windowed] + windowed
  x = b.reshape(b.transpose(ins[0], perm), [-1, 1] + [shape[i] for i in windowed])
  attrs = dict(kernel_shape=[int(p['window_dimensions'][i]) for i in windowed],
               strides=[int(p['window_strides'][i]) for i in windowed],
               pads=[pads[i][0] for i in windowed] + [pads[i][1] for i in windowed],
               dilations=[int(p['window_dilation'][i]) for i in windowed])
  if eqn.primitive.name == 'reduce_window_max':
    y = b.op('MaxPool', [x], **attrs)
  else:
    ones = b.const(np.ones([1, 1] + attrs.pop('kernel_shape'), eqn.invars[0].aval.dtype))
    y = b.op('Conv', [x, ones], **attrs)
  out_shape = eqn.outvars[0].aval.shape
  y = b.reshape(y, [out_shape[i] for i in perm])
  return [b.transpose(y, np.argsort(perm))]


def _fill_value(eqn):
  value = eqn.params['fill_value']
  dtype = np.dtype(eqn.outvars[0].aval.dtype)
  if value is not None:
    return np.asarray(value, dtype)
  if np.issubdtype(dtype, np.inexact):
    return np.asarray(np.nan, dtype)
  if dtype == np.bool_:
    return np.asarray(True)
  info = np.iinfo(dtype)
  return np.asarray(info.min if np.issubdtype(dtype, np.signedinteger) else info.max, dtype)


def _window_index(b: oc.Builder, eqn, index: str, dims: list[int], sizes: list[Any],
                  windowed: list[int]):
  """Start indices clamped so each window fits, expanded over the windows.

  Args:
    b: the builder.
    eqn: the gather or scatter (for errors).
    index: the start indices [index dims..., len(dims)].
    dims: the operand dimension each index column indexes.
    sizes: the window size along each of `dims` (1 where collapsed).
    windowed: positions j in `dims` whose window is kept as an axis.

  Returns:
    (int64 [index dims..., window sizes..., len(dims)] element indices of
    every element along `dims`, bool [index dims...] whether the start was
    in bounds).
  """
  shape = eqn.invars[0].aval.shape
  if not all(oc.is_int(shape[d]) and oc.is_int(s) for d, s in zip(dims, sizes)):
    raise oc.unsupported(eqn, 'an index along a symbolic dimension')
  index = b.op('Cast', [index], to=TensorProto.INT64)
  clamped = b.op('Max', [b.op('Min', [index, b.ints([shape[d] - s for d, s in zip(dims, sizes)])]),
                         b.ints([0])])
  inside = b.op('ReduceMin', [b.op('Cast', [b.op('Equal', [index, clamped])],
                                   to=TensorProto.INT32), b.ints([-1])], keepdims=0)
  if windowed:  # start + 0..size-1 along each windowed dimension, on new axes
    rank = len(eqn.invars[1].aval.shape)
    offsets = np.zeros([int(sizes[j]) for j in windowed] + [len(dims)], np.int64)
    for axis, j in enumerate(windowed):
      view = [1] * len(windowed)
      view[axis] = offsets.shape[axis]
      offsets[..., j] += np.arange(offsets.shape[axis]).reshape(view)
    clamped = b.op('Add', [b.op('Unsqueeze', [clamped, b.ints(range(rank - 1, rank - 1 + len(
        windowed)))]), b.const(offsets)])
  return clamped, b.op('Cast', [inside], to=TensorProto.BOOL)


def _gather(b: oc.Builder, eqn, ins):
  """Any lax gather whose unindexed dimensions are taken whole, as ONNX GatherND.

  The operand is transposed to [batching dims, indexed dims, the rest], the
  indices to [their batching dims, other index dims, windows, vector];
  GatherND (batch_dims = the batching dims) then gives [index dims, windows,
  rest], transposed to lax's output layout.
  """
  dn, p = eqn.params['dimension_numbers'], eqn.params
  shape, index_shape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  sim, ob, ib = list(dn.start_index_map), list(dn.operand_batching_dims), list(
      dn.start_indices_batching_dims)
  rest = [d for d in range(len(shape)) if d not in sim and d not in ob]
  if not oc.is_int(index_shape[-1], len(sim)) or not all(
      oc.same_dim(p['slice_sizes'][d], shape[d]) for d in rest):
    raise oc.unsupported(eqn, f'gather form {dn} with slice sizes {p["slice_sizes"]}')
  windows = [d for d in sim if d not in dn.collapsed_slice_dims]
  index, inside = _window_index(b, eqn, ins[1], sim, [p['slice_sizes'][d] for d in sim],
                                [j for j, d in enumerate(sim) if d in windows])
  nidx = len(index_shape) - 1
  others = [i for i in range(nidx) if i not in ib]
  index = b.transpose(index, ib + others + list(range(nidx, nidx + len(windows) + 1)))
  y = b.op('GatherND', [b.transpose(ins[0], ob + sim + rest), index], batch_dims=len(ob))
  if p['mode'].name == 'FILL_OR_DROP':
    mask = b.reshape(b.transpose(inside, ib + others),
                     [index_shape[i] for i in ib + others] + [1] * (len(windows) + len(rest)))
    y = b.op('Where', [mask, y, b.const(_fill_value(eqn))])
  labels = [('i', i) for i in ib + others] + [('o', d) for d in windows + rest]
  offset_dims = list(dn.offset_dims)
  offset_operand = sorted(windows + rest)
  out_rank = len(eqn.outvars[0].aval.shape)
  batch_at = [q for q in range(out_rank) if q not in offset_dims]
  target = [('i', batch_at.index(q)) if q in batch_at
            else ('o', offset_operand[offset_dims.index(q)]) for q in range(out_rank)]
  return [b.transpose(y, [labels.index(t) for t in target])]


def _scatter_add(b: oc.Builder, eqn, ins):
  """lax scatter-add whose unindexed dimensions are updated whole, as ScatterND.

  The operand is transposed to [indexed dims, the rest], the start indices
  expanded over the indexed dimensions' windows (as a gather's), the updates
  transposed to [index dims, those windows, the rest];
  ScatterND(reduction='add') then adds every element at its index.
  """
  dn = eqn.params['dimension_numbers']
  shape, index_shape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  update_shape = eqn.invars[2].aval.shape
  sdod = list(dn.scatter_dims_to_operand_dims)
  rest = [d for d in range(len(shape)) if d not in sdod]
  windowed = dict(zip([d for d in range(len(shape)) if d not in dn.inserted_window_dims],
                      dn.update_window_dims))  # operand dim -> its update window dim
  if (dn.operand_batching_dims or not set(dn.inserted_window_dims) <= set(sdod)
      or not oc.is_int(index_shape[-1], len(sdod))
      or not all(d in windowed and oc.same_dim(update_shape[windowed[d]], shape[d])
                 for d in rest)):
    raise oc.unsupported(eqn, f'scatter-add form {dn}')
  sizes = [update_shape[windowed[d]] if d in windowed else 1 for d in sdod]
  index, inside = _window_index(b, eqn, ins[1], sdod, sizes,
                                [j for j, d in enumerate(sdod) if d in windowed])
  scattered = [i for i in range(len(update_shape)) if i not in dn.update_window_dims]
  windows = [windowed[d] for d in sdod if d in windowed]
  updates = b.transpose(ins[2], scattered + windows + [windowed[d] for d in rest])
  mask = b.reshape(inside, list(index_shape[:-1]) + [1] * (len(windows) + len(rest)))
  if eqn.params['mode'].name == 'FILL_OR_DROP':  # lax skips a window that does not fit
    updates = b.op('Where', [mask, updates, b.const(np.zeros((), eqn.invars[2].aval.dtype))])
  order = sdod + rest
  y = b.op('ScatterND', [b.transpose(ins[0], order), index, updates], reduction='add')
  return [b.transpose(y, [order.index(d) for d in range(len(shape))])]


def _dot_general(b: oc.Builder, eqn, ins):
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  lr, rr = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
  out_dtype = eqn.outvars[0].aval.dtype
  ins = [x if np.dtype(v.aval.dtype) == np.dtype(out_dtype)
         else b.op('Cast', [x], to=oc.onnx_dtype(out_dtype)) for x, v in zip(ins, eqn.invars)]
  if not lb and rr == 2 and tuple(lc) == (lr - 1,) and len(rc) == 1:
    w = ins[1] if tuple(rc) == (0,) else b.op('Transpose', [ins[1]], perm=[1, 0])
    return [b.op('MatMul', [ins[0], w])]
  letters = iter(string.ascii_lowercase)
  lhs = [next(letters) for _ in range(lr)]
  rhs = [next(letters) for _ in range(rr)]
  for i, j in zip((*lc, *lb), (*rc, *rb)):
    rhs[j] = lhs[i]
  out = ([lhs[i] for i in lb] + [lhs[i] for i in range(lr) if i not in (*lc, *lb)]
         + [rhs[j] for j in range(rr) if j not in (*rc, *rb)])
  return [b.op('Einsum', ins, equation=f'{"".join(lhs)},{"".join(rhs)}->{"".join(out)}')]


def _pad(b: oc.Builder, eqn, ins):
  config = eqn.params['padding_config']
  if any(not oc.is_int(i, 0) for _, _, i in config):
    raise oc.unsupported(eqn, 'interior padding')
  x, pads = _crop_negative(b, ins[0], [(lo, hi) for lo, hi, _ in config], first_axis=0)
  if any(lo or hi for lo, hi in pads):
    x = b.op('Pad', [x, b.ints([lo for lo, _ in pads] + [hi for _, hi in pads]), ins[1]],
             mode='constant')
  return [x]


_REDUCE = {'reduce_sum': 'ReduceSum', 'reduce_max': 'ReduceMax', 'reduce_min': 'ReduceMin',
           'reduce_prod': 'ReduceProd', 'reduce_and': 'ReduceMin', 'reduce_or': 'ReduceMax'}


def _reduce(b: oc.Builder, eqn, ins):
  x = ins[0]
  boolean = np.dtype(eqn.invars[0].aval.dtype) == np.bool_
  if boolean:
    x = b.op('Cast', [x], to=TensorProto.INT32)
  y = b.op(_REDUCE[eqn.primitive.name], [x, b.ints(eqn.params['axes'])], keepdims=0)
  return [b.op('Cast', [y], to=TensorProto.BOOL) if boolean else y]


def _argminmax(b: oc.Builder, eqn, ins):
  axis, = eqn.params['axes']
  op = 'ArgMax' if eqn.primitive.name == 'argmax' else 'ArgMin'
  index = b.op(op, ins, axis=int(axis), keepdims=0, select_last_index=0)  # ties: the first
  return [b.op('Cast', [index], to=oc.onnx_dtype(eqn.params['index_dtype']))]


def _cumsum(b: oc.Builder, eqn, ins):
  return [b.op('CumSum', [ins[0], b.ints([eqn.params['axis']])],
               reverse=int(bool(eqn.params['reverse'])))]


RULES = {'conv_general_dilated': _conv, 'reduce_window_max': _reduce_window,
         'reduce_window_sum': _reduce_window, 'gather': _gather, 'scatter-add': _scatter_add,
         'dot_general': _dot_general, 'pad': _pad, 'argmax': _argminmax,
         'argmin': _argminmax, 'cumsum': _cumsum, **{name: _reduce for name in _REDUCE}}
