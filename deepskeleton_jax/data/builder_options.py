"""A dataset builder's options (`config.data.builder_kwargs`), typed and checked.

The options of a builder are the fields of its `tfds.core.BuilderConfig`
dataclass (those TFDS's base class does not define), each with its annotated
type: bool, int, float, str, or a tuple of those (`tuple[str, ...]`,
`tuple[float, float]`). Values come from a config file (Python values) or
from the command line as text:

  --config.data.builder_kwargs.<name>=VALUE     any option of the builder
  --config.data.builder_kwargs="{'name': value, ...}"   several; merged into
                                                the config file's options

Text is read by the option's type: bool `true`/`false` (or `1`/`0`, any
case); int and float as numbers; str as is; a tuple as a Python literal
(`"()"`, `"('S11/Directions',)"`) or comma-separated items (`S1,S5`, `4000,6000`).
An unknown option or a value of the wrong type is one `errors.ConfigError`
naming the flag (or key) and, for an unknown one, the valid options.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
import typing
from typing import Any

import tensorflow_datasets as tfds

from deepskeleton_jax import errors

FLAG = '--config.data.builder_kwargs'
_BASE_FIELDS = frozenset(f.name for f in dataclasses.fields(tfds.core.BuilderConfig))


def option_types(cls: type[tfds.core.GeneratorBasedBuilder]) -> dict[str, Any]:
  """The builder's options: name -> annotated type, from its default config's dataclass."""
  config_cls = type(cls.BUILDER_CONFIGS[0])
  # typing.get_type_hints would also resolve TFDS's own fields, whose names its
  # module does not import; a string annotation (`from __future__ import
  # annotations`) is resolved in the builder module's namespace.
  namespace = vars(sys.modules[config_cls.__module__])
  resolve = lambda t: eval(t, namespace) if isinstance(t, str) else t  # pylint: disable=eval-used
  return {f.name: resolve(f.type) for f in dataclasses.fields(config_cls)
          if f.name not in _BASE_FIELDS}


def _type_name(hint: Any) -> str:
  return getattr(hint, '__name__', None) if not typing.get_args(hint) else str(hint)


def _convert(value: Any, hint: Any, from_text: bool) -> Any:
  """`value` as `hint` (text parsed when `from_text`); ValueError if it is not one."""
  text = value.strip() if from_text and isinstance(value, str) else None
  if hint is bool:
    if isinstance(value, bool):
      return value
    if text is not None and text.lower() in ('true', 'false', '1', '0'):
      return text.lower() in ('true', '1')
  elif hint is int:
    if text is not None and text.lstrip('+-').isdigit():
      return int(text)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value):
      return int(value)
  elif hint is float:
    try:
      return float(text) if text is not None else _number(value)
    except ValueError:
      pass
  elif hint is str:
    if isinstance(value, str):
      return value
  elif typing.get_origin(hint) is tuple:
    items = value
    if text is not None:
      items = (_literal(text) if text[:1] in '([' else
               [t.strip() for t in text.split(',') if t.strip()])
    if isinstance(items, (list, tuple)):
      args = typing.get_args(hint)
      kinds = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
      if len(kinds) == len(items):
        return tuple(_convert(v, t, from_text) for v, t in zip(items, kinds))
  raise ValueError(f'expected a value of type {_type_name(hint)}')


def _number(value: Any) -> float:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  raise ValueError(value)


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (SyntaxError, ValueError):
    raise ValueError(text) from None


def option_value(cls: type[tfds.core.GeneratorBasedBuilder], name: str, value: Any, *,
                 where: str, from_text: bool = False) -> Any:
  """One option's value, typed.

  Args:
    cls: the builder class.
    name: the option.
    value: its value (Python, or text with `from_text`).
    where: the flag or key, for messages.
    from_text: parse `value` as command-line text.

  Returns:
    The value as the option's type (a tuple for tuples).

  Raises:
    errors.ConfigError: an unknown option (the message lists the valid ones) or
      a value of the wrong type.
  """
  types = option_types(cls)
  if name not in types:
    raise errors.ConfigError(f'{where}: not an option of {cls.name}; its options: '
                             f'{", ".join(sorted(types))}')
  try:
    return _convert(value, types[name], from_text)
  except ValueError:
    default = getattr(cls.BUILDER_CONFIGS[0], name)
    raise errors.ConfigError(f'{where}: expected a value of type {_type_name(types[name])} '
                             f'like the default {default!r}, got {value!r}') from None


def parse_flags(cls: type[tfds.core.GeneratorBasedBuilder],
                flags: list[tuple[str, str]]) -> dict[str, Any]:
  """The options set by `--config.data.builder_kwargs[.<name>]` flags, typed.

  Args:
    cls: the builder class.
    flags: (flag name, text) pairs in command-line order (later ones win).

  Returns:
    name -> value.

  Raises:
    errors.ConfigError: naming the flag.
  """
  out = {}
  for flag, text in flags:
    if flag == FLAG:
      try:
        entries = _literal(text)
      except ValueError:
        entries = None
      if not isinstance(entries, dict):
        raise errors.ConfigError(f'{flag}={text}: expected a Python dict of options, e.g. '
                                 f"\"{{'strict': True}}\", or {FLAG}.<name>=VALUE")
      out.update({k: option_value(cls, str(k), v, where=f'{flag}: {k!r}')
                  for k, v in entries.items()})
    else:
      name = flag[len(FLAG) + 1:]
      out[name] = option_value(cls, name, text, where=f'{flag}={text}', from_text=True)
  return out
