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
- `gather`: the two forms jnp's indexing produces, `x[..., i, ...]` /
  `jnp.take` (ONNX `Gather`) and `take_along_axis` with batch dimensions
  (ONNX `GatherND` with `batch_dims`), with lax's index modes (clamped, or
  `fill_value` out of bounds).
- `dot_general`: `MatMul` for a dense layer, else `Einsum`.
"""

from __future__ import annotations

import string

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


def _crop_negative(b: oc.Builder, x: str, pads) -> tuple[str, list]:
  """Negative lax padding crops the input ([N, C, ...]); returns the rest."""
  crop = [(2 + i, lo, hi) for i, (lo, hi) in enumerate(pads) if lo < 0 or hi < 0]
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
    x, pads = _crop_negative(b, x, pads)
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


def _gather_form(eqn) -> tuple[str, int]:
  """('nd', batch dims) for GatherND, ('axis', axis) for Gather; else raises."""
  dn, p = eqn.params['dimension_numbers'], eqn.params
  shape = eqn.invars[0].aval.shape
  index_shape = eqn.invars[1].aval.shape
  out_rank = len(eqn.outvars[0].aval.shape)
  sim = tuple(dn.start_index_map)
  nb, m = len(dn.operand_batching_dims), len(sim)
  full = lambda dims: all(oc.same_dim(p['slice_sizes'][i], shape[i]) for i in dims)
  if (oc.is_int(index_shape[-1], m) and tuple(dn.collapsed_slice_dims) == sim
      and all(oc.is_int(p['slice_sizes'][i], 1) for i in sim)):
    rest = [i for i in range(len(shape)) if i not in sim and i not in dn.operand_batching_dims]
    if (tuple(dn.operand_batching_dims) == tuple(range(nb))
        and tuple(dn.start_indices_batching_dims) == tuple(range(nb))
        and sim == tuple(range(nb, nb + m)) and full(rest)
        and tuple(dn.offset_dims) == tuple(range(out_rank - len(rest), out_rank))):
      return 'nd', nb
    batch_at = [i for i in range(out_rank) if i not in dn.offset_dims]
    if nb == 0 and m == 1 and full(rest) and batch_at == list(
        range(sim[0], sim[0] + len(index_shape) - 1)):
      return 'axis', sim[0]
  raise oc.unsupported(eqn, f'gather form {dn} with slice sizes {p["slice_sizes"]}')


def _gather(b: oc.Builder, eqn, ins):
  form, k = _gather_form(eqn)
  shape = eqn.invars[0].aval.shape
  index_shape = eqn.invars[1].aval.shape
  sizes = [shape[i] for i in eqn.params['dimension_numbers'].start_index_map]
  if not all(oc.is_int(s) for s in sizes):
    raise oc.unsupported(eqn, 'gather along a symbolic dimension')
  index = b.op('Cast', [ins[1]], to=TensorProto.INT64)
  clamped = b.op('Max', [b.op('Min', [index, b.ints([s - 1 for s in sizes])]), b.ints([0])])
  if form == 'nd':
    y = b.op('GatherND', [ins[0], clamped], batch_dims=k)
    mask_shape = list(index_shape[:-1]) + [1] * (len(shape) - len(sizes) - k)
  else:
    y = b.op('Gather', [ins[0], b.reshape(clamped, index_shape[:-1])], axis=k)
    mask_shape = [1] * k + list(index_shape[:-1]) + [1] * (len(shape) - 1 - k)
  if eqn.params['mode'].name != 'FILL_OR_DROP':  # CLIP, PROMISE_IN_BOUNDS: clamped
    return [y]
  inside = b.op('Equal', [index, clamped])
  inside = b.op('ReduceMin', [b.op('Cast', [inside], to=TensorProto.INT32), b.ints([-1])],
                keepdims=0)
  inside = b.reshape(b.op('Cast', [inside], to=TensorProto.BOOL), mask_shape)
  return [b.op('Where', [inside, y, b.const(_fill_value(eqn))])]


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


RULES = {'conv_general_dilated': _conv, 'reduce_window_max': _reduce_window,
         'reduce_window_sum': _reduce_window, 'gather': _gather,
         'dot_general': _dot_general}
