"""A small jaxpr -> ONNX converter: what `--config.export.format=onnx` runs.

`convert(closed_jaxpr, input_names, output_names)` walks a traced function's
equations (inlining `jit` and `custom_jvp_call` bodies) and writes each
primitive as ONNX operators with the `onnx` package's helpers (opset
`OPSET`); the closed-over constants (the trained variables) become
initializers. Only lax primitives reach it, so nothing depends on how Flax
or jnp spelled the model. `PRIMITIVES` lists what it converts: the
elementwise and shape primitives here, convolutions, pooling, gathers, dot
products, padding and reductions in `onnx_ops.py`. Anything else raises
`UnsupportedError` naming the primitive.

Symbolic dimensions (the batch `b` of `jax.export.symbolic_shape`) become
ONNX `dim_param`s of the inputs and outputs; a shape that needs one at run
time (a reshape or broadcast to `[b, ...]`) reads it from the input with
`Shape` (any multiple `k * b` of an input's symbolic dimension is allowed).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import jax
from jax.extend import core as jex_core
import numpy as np
import onnx
from onnx import external_data_helper
from onnx import helper
from onnx import numpy_helper

OPSET = 18
# Above this many bytes of initializers, `serialize` moves them to a data file
# beside the model (one protobuf message cannot exceed 2 GiB).
INLINE_BYTES = 1 << 30
IR_VERSION = 8  # the oldest IR that carries opset 18: older runtimes load it
_INT64_MIN = np.iinfo(np.int64).min


class UnsupportedError(ValueError):
  """A primitive (or one of its parameters) the converter cannot express."""


def unsupported(eqn, why: str) -> UnsupportedError:
  """The error for equation `eqn` (named by its primitive) and the reason."""
  return UnsupportedError(f'{eqn.primitive.name}: {why}')


def is_int(d: Any, value: int | None = None) -> bool:
  """Whether dimension `d` is a plain integer (equal to `value` if given)."""
  return not jax.export.is_symbolic_dim(d) and (value is None or int(d) == value)


def same_dim(d1: Any, d2: Any) -> bool:
  """Whether two dimensions (integers or symbolic) are known to be equal."""
  if is_int(d1) and is_int(d2):
    return int(d1) == int(d2)
  return not is_int(d1) and not is_int(d2) and bool(d1 == d2)


class Builder:
  """Accumulates ONNX nodes and initializers; names every value uniquely."""

  def __init__(self, symbols: dict[Any, tuple[str, int]]):
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []
    self._ids = itertools.count()
    self._small = {}
    self.constant: dict[str, Any] = {}  # names computable from initializers alone
    self._symbols = symbols          # symbolic dim -> (input name, axis)
    self._symbol_values = {}         # symbolic dim -> int64 [1] tensor name

  def fresh(self, hint: str) -> str:
    return f'{hint}_{next(self._ids)}'

  def op(self, op_type: str, inputs: Sequence[str], num_outputs: int = 1, **attrs):
    """Appends one node; returns its output name (a list if several)."""
    outs = [self.fresh(op_type.lower()) for _ in range(num_outputs)]
    self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
    if inputs and all(x in self.constant for x in inputs):
      self.constant.update((o, None) for o in outs)  # ONNX Runtime folds these
    return outs[0] if num_outputs == 1 else outs

  def const(self, value: Any, dtype: Any = None) -> str:
    """An initializer holding `value` (small ones shared)."""
    arr = np.asarray(value, dtype=dtype)
    key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 16 else None
    if key is not None and key in self._small:
      return self._small[key]
    name = self.fresh('const')
    self.initializers.append(numpy_helper.from_array(arr, name))
    self.constant[name] = arr if key is not None else None
    if key is not None:
      self._small[key] = name
    return name

  def ints(self, values: Sequence[int]) -> str:
    return self.const(np.asarray([int(v) for v in values], np.int64))

  def transpose(self, x: str, perm: Sequence[int]) -> str:
    perm = [int(p) for p in perm]
    return x if perm == sorted(perm) else self.op('Transpose', [x], perm=perm)

  def _symbol_value(self, d: Any) -> str:
    """int64 [1] tensor of symbolic dimension `d` (a multiple of an input's)."""
    for sym, (name, axis) in self._symbols.items():
      factor = d // sym
      if is_int(factor) and is_int(d % sym, 0):
        if sym not in self._symbol_values:
          self._symbol_values[sym] = self.op('Shape', [name], start=axis, end=axis + 1)
        value = self._symbol_values[sym]
        return value if int(factor) == 1 else self.op('Mul', [value, self.ints([factor])])
    raise UnsupportedError(f'dimension {d} is not a multiple of an input\'s symbolic '
                           f'dimension {list(self._symbols)}')

  def shape(self, dims: Sequence[Any], allow_minus_one: bool = False) -> str:
    """int64 [len(dims)] tensor of a shape whose entries may be symbolic.

    With `allow_minus_one` (Reshape's target), a single symbolic entry is
    written as -1 (inferred) instead of being computed.
    """
    symbolic = [i for i, d in enumerate(dims) if not is_int(d)]
    if not symbolic:
      return self.ints(dims)
    if allow_minus_one and len(symbolic) == 1:
      return self.ints([-1 if i in symbolic else d for i, d in enumerate(dims)])
    parts = [self._symbol_value(d) if not is_int(d) else self.ints([d]) for d in dims]
    return self.op('Concat', parts, axis=0)

  def reshape(self, x: str, dims: Sequence[Any]) -> str:
    return self.op('Reshape', [x, self.shape(dims, allow_minus_one=True)])


def onnx_dtype(dtype: Any) -> int:
  """ONNX's element type code of a numpy/jax dtype."""
  return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _aval(var) -> Any:
  return var.aval


# ----------------------------------------------------------------------------
# Elementwise primitives.

_UNARY = {'neg': 'Neg', 'abs': 'Abs', 'exp': 'Exp', 'log': 'Log', 'sqrt': 'Sqrt',
          'logistic': 'Sigmoid', 'tanh': 'Tanh', 'sign': 'Sign', 'floor': 'Floor',
          'ceil': 'Ceil', 'sin': 'Sin', 'cos': 'Cos', 'erf': 'Erf', 'copy': 'Identity',
          'copy_p': 'Identity', 'stop_gradient': 'Identity'}
_BINARY = {'add': 'Add', 'add_any': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max',
           'min': 'Min', 'pow': 'Pow', 'eq': 'Equal', 'lt': 'Less', 'le': 'LessOrEqual',
           'gt': 'Greater', 'ge': 'GreaterOrEqual'}
_LOGICAL = {'and': ('And', 'BitwiseAnd'), 'or': ('Or', 'BitwiseOr'),
            'xor': ('Xor', 'BitwiseXor'), 'not': ('Not', 'BitwiseNot')}


def _logical(b: Builder, eqn, ins):
  boolean, bitwise = _LOGICAL[eqn.primitive.name]
  is_bool = np.dtype(_aval(eqn.invars[0]).dtype) == np.bool_
  return [b.op(boolean if is_bool else bitwise, ins)]


def _is_zero(b: Builder, name: str) -> bool:
  value = b.constant.get(name)
  return value is not None and not np.any(value)


def _elementwise(b: Builder, eqn, ins):
  name = eqn.primitive.name
  # Spelled so that ONNX Runtime fuses them into convolutions: x - c = x + (-c)
  # exactly (batch norm's centring), max(x, 0) = Relu(x).
  if name == 'sub' and ins[1] in b.constant:
    return [b.op('Add', [ins[0], b.op('Neg', [ins[1]])])]
  if name == 'max' and (_is_zero(b, ins[0]) or _is_zero(b, ins[1])):
    return [b.op('Relu', [ins[1] if _is_zero(b, ins[0]) else ins[0]])]
  if name in _UNARY:
    return [b.op(_UNARY[name], ins)]
  if name in _BINARY:
    return [b.op(_BINARY[name], ins)]
  x, = ins[:1]
  dtype = _aval(eqn.outvars[0]).dtype
  one = lambda: b.const(1, dtype)
  if name == 'ne':
    return [b.op('Not', [b.op('Equal', ins)])]
  if name == 'rsqrt':
    return [b.op('Reciprocal', [b.op('Sqrt', [x])])]
  if name in ('square', 'integer_pow'):
    y = 2 if name == 'square' else int(eqn.params['y'])
    if y == 2:
      return [b.op('Mul', [x, x])]
    return [b.op('Pow', [x, b.const(y, dtype)])]
  if name == 'rem':  # C fmod: the sign of the dividend, as lax.rem
    return [b.op('Mod', ins, fmod=1)]
  if name == 'log1p':
    return [b.op('Log', [b.op('Add', [x, one()])])]
  if name == 'expm1':
    return [b.op('Sub', [b.op('Exp', [x]), one()])]
  if name == 'exp2':
    return [b.op('Pow', [b.const(2, dtype), x])]
  if name == 'is_finite':
    return [b.op('Not', [b.op('Or', [b.op('IsInf', [x]), b.op('IsNaN', [x])])])]
  if name == 'clamp':  # clamp(lo, x, hi)
    return [b.op('Max', [b.op('Min', [ins[1], ins[2]]), ins[0]])]
  if name == 'round':
    if int(eqn.params['rounding_method']) == 1:  # TO_NEAREST_EVEN
      return [b.op('Round', [x])]
    half = b.op('Floor', [b.op('Add', [b.op('Abs', [x]), b.const(0.5, dtype)])])
    return [b.op('Mul', [b.op('Sign', [x]), half])]
  raise unsupported(eqn, 'no elementwise rule')


def _convert_element_type(b: Builder, eqn, ins):
  return [b.op('Cast', ins, to=onnx_dtype(eqn.params['new_dtype']))]


def _select_n(b: Builder, eqn, ins):
  pred, *cases = ins
  if np.dtype(_aval(eqn.invars[0]).dtype) == np.bool_:
    return [b.op('Where', [pred, cases[1], cases[0]])]
  out = cases[0]
  for i, case in enumerate(cases[1:], start=1):
    out = b.op('Where', [b.op('Equal', [pred, b.const(i, _aval(eqn.invars[0]).dtype)]),
                         case, out])
  return [out]


# ----------------------------------------------------------------------------
# Shapes.


def _broadcast_in_dim(b: Builder, eqn, ins):
  shape = tuple(eqn.params['shape'])
  in_shape = _aval(eqn.invars[0]).shape
  mid = [1] * len(shape)
  for j, i in enumerate(eqn.params['broadcast_dimensions']):
    mid[int(i)] = in_shape[j]
  x = ins[0]
  if len(mid) != len(in_shape):
    x = b.reshape(x, mid)
  # Expand broadcasts as numpy: 1 keeps the input's size.
  target = [d if is_int(m, 1) and not is_int(d, 1) else 1 for m, d in zip(mid, shape)]
  if any(not is_int(t, 1) for t in target):
    x = b.op('Expand', [x, b.shape(target)])
  return [x]


def _reshape(b: Builder, eqn, ins):
  if eqn.params.get('dimensions') is not None:
    raise unsupported(eqn, 'reshape with dimensions')
  return [b.reshape(ins[0], eqn.params['new_sizes'])]


def _squeeze(b: Builder, eqn, ins):
  return [b.op('Squeeze', [ins[0], b.ints(eqn.params['dimensions'])])]


def _transpose(b: Builder, eqn, ins):
  return [b.transpose(ins[0], eqn.params['permutation'])]


def _slice(b: Builder, eqn, ins):
  shape = _aval(eqn.invars[0]).shape
  strides = eqn.params['strides'] or (1,) * len(shape)
  axes, starts, ends, steps = [], [], [], []
  for axis, (start, limit, step, size) in enumerate(
      zip(eqn.params['start_indices'], eqn.params['limit_indices'], strides, shape)):
    if is_int(start, 0) and is_int(step, 1) and same_dim(limit, size):
      continue
    if not (is_int(start) and is_int(limit) and is_int(step)):
      raise unsupported(eqn, f'symbolic slice bounds on axis {axis}')
    axes.append(axis), starts.append(start), ends.append(limit), steps.append(step)
  if not axes:
    return [b.op('Identity', ins)]
  return [b.op('Slice', [ins[0], b.ints(starts), b.ints(ends), b.ints(axes), b.ints(steps)])]


def _rev(b: Builder, eqn, ins):
  axes = list(eqn.params['dimensions'])
  return [b.op('Slice', [ins[0], b.ints([-1] * len(axes)), b.ints([_INT64_MIN] * len(axes)),
                         b.ints(axes), b.ints([-1] * len(axes))])]


def _concatenate(b: Builder, eqn, ins):
  return [b.op('Concat', ins, axis=int(eqn.params['dimension']))]


def _stack(b: Builder, eqn, ins):
  axis = int(eqn.params['axis'])
  return [b.op('Concat', [b.op('Unsqueeze', [x, b.ints([axis])]) for x in ins], axis=axis)]


def _split(b: Builder, eqn, ins):
  sizes = eqn.params['sizes']
  outs = b.op('Split', [ins[0], b.ints(sizes)], num_outputs=len(sizes),
              axis=int(eqn.params['axis']))
  return outs if len(sizes) > 1 else [outs]


def _unstack(b: Builder, eqn, ins):
  axis = int(eqn.params['axis'])
  return [b.op('Squeeze', [b.op('Gather', [ins[0], b.ints([i])], axis=axis), b.ints([axis])])
          for i in range(len(eqn.outvars))]


def _iota(b: Builder, eqn, ins):
  del ins
  p = eqn.params
  shape, dim, dtype = tuple(p['shape']), int(p['dimension']), np.dtype(p['dtype'])
  view = [1] * len(shape)
  view[dim] = shape[dim]
  if all(is_int(d) for d in shape):
    line = np.arange(shape[dim], dtype=dtype).reshape(view)
    return [b.const(np.broadcast_to(line, shape).copy())]
  size = b.op('Squeeze', [b.shape([shape[dim]])])
  line = b.op('Range', [b.const(0, np.int64), size, b.const(1, np.int64)])
  line = b.reshape(b.op('Cast', [line], to=onnx_dtype(dtype)), view)
  return [b.op('Expand', [line, b.shape(shape)])]


def _dim_as_value(b: Builder, eqn, ins):
  del ins
  value = b.shape([eqn.params['dim']])
  return [b.op('Cast', [b.op('Squeeze', [value])], to=onnx_dtype(_aval(eqn.outvars[0]).dtype))]


def _identity_all(b: Builder, eqn, ins):
  del b, eqn
  return list(ins)  # optimization_barrier: the values themselves


Rule = Callable[[Builder, Any, list], list]


def rules() -> dict[str, Rule]:
  """Primitive name -> conversion rule `(builder, eqn, input names) -> output names`."""
  from deepskeleton_jax.inference import onnx_ops  # pylint: disable=g-import-not-at-top
  table: dict[str, Rule] = {}
  for name in (*_UNARY, *_BINARY, 'ne', 'rsqrt', 'square', 'integer_pow', 'rem', 'log1p',
               'expm1', 'exp2', 'is_finite', 'clamp', 'round'):
    table[name] = _elementwise
  table.update({name: _logical for name in _LOGICAL})
  table.update({
      'convert_element_type': _convert_element_type, 'select_n': _select_n,
      'broadcast_in_dim': _broadcast_in_dim, 'reshape': _reshape, 'squeeze': _squeeze,
      'transpose': _transpose, 'slice': _slice, 'rev': _rev, 'concatenate': _concatenate,
      'stack': _stack, 'unstack': _unstack, 'split': _split, 'iota': _iota,
      'optimization_barrier': _identity_all, 'dim_as_value': _dim_as_value,
      # Sharding annotations: the values pass unchanged.
      'reshard': _identity_all, 'sharding_constraint': _identity_all})
  table.update(onnx_ops.RULES)
  return table


# Primitives whose body is another jaxpr, inlined.
_CALLS = ('jit', 'pjit', 'closed_call', 'core_call', 'custom_jvp_call', 'custom_vjp_call',
          'remat', 'checkpoint')
PRIMITIVES = tuple(sorted(set(rules()) | set(_CALLS) | {'scan'}))


def _body(eqn):
  for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
    body = eqn.params.get(key)
    if isinstance(body, jex_core.ClosedJaxpr):
      return body.jaxpr, body.consts
    if isinstance(body, jex_core.Jaxpr):
      return body, ()
  raise unsupported(eqn, 'call without a jaxpr body')


def _unrolled_scan(b: Builder, table: dict[str, Rule], eqn, ins: list[str]) -> list[str]:
  """A `lax.scan` (`fori_loop` with static bounds, `lax.map`), unrolled `length` times.

  Iteration i reads slice i of each scanned input (xs) along axis 0 and the
  stacked outputs (ys) gather each iteration's slice along a new axis 0.
  """
  nc, nk, length = eqn.params['num_consts'], eqn.params['num_carry'], int(eqn.params['length'])
  body = eqn.params['jaxpr']
  consts, carry, xs = ins[:nc], ins[nc:nc + nk], ins[nc + nk:]
  order = range(length - 1, -1, -1) if eqn.params.get('reverse') else range(length)
  ys = {}
  for i in order:
    x_i = [b.op('Gather', [x, b.const(np.asarray(i, np.int64))], axis=0) for x in xs]
    outs = _emit(b, table, body.jaxpr, body.consts, consts + carry + x_i)
    carry, ys[i] = outs[:nk], outs[nk:]
  stacked = [b.op('Concat', [b.op('Unsqueeze', [ys[i][k], b.ints([0])]) for i in range(length)],
                  axis=0) for k in range(len(eqn.outvars) - nk)]
  return carry + stacked


def _emit(b: Builder, table: dict[str, Rule], jaxpr, consts, args: list[str]) -> list[str]:
  """Converts `jaxpr`'s equations; returns the names of its outputs."""
  env = {}

  def read(v):
    if isinstance(v, jex_core.Literal):
      return b.const(np.asarray(v.val, dtype=v.aval.dtype))
    return env[v]

  for var, value in zip(jaxpr.constvars, consts):
    env[var] = b.const(np.asarray(value))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in _CALLS:
      body, body_consts = _body(eqn)
      outs = _emit(b, table, body, body_consts, ins)
    elif name == 'scan':
      outs = _unrolled_scan(b, table, eqn, ins)
    elif name in table:
      outs = table[name](b, eqn, ins)
    else:
      raise unsupported(eqn, 'no ONNX rule')
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def _value_info(name: str, aval) -> onnx.ValueInfoProto:
  dims = [int(d) if is_int(d) else str(d) for d in aval.shape]
  return helper.make_tensor_value_info(name, onnx_dtype(aval.dtype), dims)


def convert(closed: jex_core.ClosedJaxpr, input_names: Sequence[str],
            output_names: Sequence[str], doc: str = '') -> onnx.ModelProto:
  """The ONNX model of a closed jaxpr.

  Args:
    closed: e.g. `jax.make_jaxpr(fn)(*specs)`; its inputs may have symbolic
      dimensions (`jax.export.symbolic_shape`).
    input_names: one name per jaxpr input.
    output_names: one name per jaxpr output.
    doc: the graph's doc string.

  Returns:
    The model (opset `OPSET`); its initializers hold the jaxpr's constants.

  Raises:
    UnsupportedError: a primitive or parameter without an ONNX rule.
  """
  jaxpr = closed.jaxpr
  if len(input_names) != len(jaxpr.invars) or len(output_names) != len(jaxpr.outvars):
    raise ValueError(f'{len(jaxpr.invars)} inputs and {len(jaxpr.outvars)} outputs need '
                     f'names, got {list(input_names)} and {list(output_names)}')
  symbols = {}
  for name, var in zip(input_names, jaxpr.invars):
    for axis, d in enumerate(var.aval.shape):
      if not is_int(d) and not any(same_dim(d, s) for s in symbols):
        symbols[d] = (name, axis)
  b = Builder(symbols)
  outs = _emit(b, rules(), jaxpr, closed.consts, list(input_names))
  for out, name in zip(outs, output_names):
    b.nodes.append(helper.make_node('Identity', [out], [name]))
  graph = helper.make_graph(
      b.nodes, 'deepskeleton_jax', [_value_info(n, v.aval) for n, v in zip(input_names, jaxpr.invars)],
      [_value_info(n, v.aval) for n, v in zip(output_names, jaxpr.outvars)],
      initializer=b.initializers, doc_string=doc)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                            producer_name='deepskeleton_jax', ir_version=IR_VERSION)
  return model


def serialize(model: onnx.ModelProto, file_name: str) -> dict[str, bytes]:
  """The files of a model, with its weights in a data file when they are large.

  Args:
    model: from `convert`; when its initializers exceed `INLINE_BYTES`, the
      tensors of 1 KiB or more are moved out of it (it is modified).
    file_name: the model's file name (e.g. 'model.onnx').

  Returns:
    {file_name: the serialized model}, or {file_name + '.data': the moved
    tensors' bytes, file_name: the model referring to them} (ONNX external
    data, located relative to the model), the data file first.
  """
  if sum(len(t.raw_data) for t in model.graph.initializer) <= INLINE_BYTES:
    return {file_name: model.SerializeToString()}
  location, chunks, offset = file_name + '.data', [], 0
  for tensor in model.graph.initializer:
    if len(tensor.raw_data) >= 1024:
      data = tensor.raw_data
      external_data_helper.set_external_data(tensor, location, offset, len(data))
      tensor.ClearField('raw_data')
      chunks.append(data)
      offset += len(data)
  return {location: b''.join(chunks), file_name: model.SerializeToString()}
