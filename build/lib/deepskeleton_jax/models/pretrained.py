"""ImageNet-pretrained ResNet-50 weights from a checkpoint the user already has.

Nothing is downloaded. `load_state_dict` reads a torchvision/timm ResNet-50
state dict (`.safetensors` through the `safetensors` package; `.pth`/`.pt`
when PyTorch happens to be installed) and `convert_resnet50` copies it into
the `backbone` of a model's variables (or into a bare `resnet.ResNet`):

  conv1.weight                        -> params/backbone/stem/conv1/kernel
  bn1.{weight,bias}                   -> params/.../stem/bn1/{scale,bias}
  bn1.{running_mean,running_var}      -> batch_stats/.../stem/bn1/{mean,var}
  layer{L}.{i}.conv{k}.weight         -> params/.../layer{L}_{i}/conv{k}/kernel
  layer{L}.{i}.bn{k}.*                -> .../layer{L}_{i}/bn{k}/*
  layer{L}.{i}.downsample.0.weight    -> .../layer{L}_{i}/downsample_conv/kernel
  layer{L}.{i}.downsample.1.*         -> .../layer{L}_{i}/downsample_bn/*

Conv kernels go from PyTorch OIHW to Flax HWIO. When the model has
`in_channels != 3`, the first conv gets the mean of the RGB filters repeated
`in_channels` times and scaled by 3 / in_channels (so a grey input repeated
over all channels gives the RGB response to that grey image). `fc.*` and
`*.num_batches_tracked` are expected-unused.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

PyTree = Any

# State-dict keys that a ResNet-50 checkpoint has but the backbone does not use.
_IGNORED = re.compile(r'^fc\.|(^|\.)num_batches_tracked$')
_BN_FIELDS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'),
              'running_var': ('batch_stats', 'var')}


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What `convert_resnet50` did not match.

  Attributes:
    missing: backbone variables (as 'collection/path') left at their
      initialisation because the state dict has no entry for them.
    unexpected: state-dict keys that map to nothing in the backbone.
    ignored: state-dict keys that are expected to be unused (fc.*,
      num_batches_tracked).
  """
  missing: tuple[str, ...]
  unexpected: tuple[str, ...]
  ignored: tuple[str, ...]

  @property
  def complete(self) -> bool:
    """True when every backbone variable was filled and no key was left over."""
    return not self.missing and not self.unexpected


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch-style state dict into NumPy arrays.

  Args:
    path: a `.safetensors` file, or a `.pth`/`.pt` file (needs PyTorch). A
      `.pth` holding {'state_dict': ...} or {'model': ...} is unwrapped, and a
      'module.' prefix (DataParallel) is stripped.

  Returns:
    Dict from key to float32 (or integer) NumPy array.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path!r} does not exist')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    state = load_file(path)
  elif path.endswith(('.pth', '.pt')):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(
          f'reading {path!r} needs PyTorch, which is not installed; convert it '
          'once elsewhere with safetensors.torch.save_file(state_dict, '
          '"resnet50.safetensors") and pass the .safetensors file') from e
    state = torch.load(path, map_location='cpu', weights_only=True)
    for wrapper in ('state_dict', 'model'):
      if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
        state = state[wrapper]
    state = {k: v.detach().cpu().numpy() for k, v in state.items()
             if hasattr(v, 'detach')}
  else:
    raise ValueError(f'checkpoint {path!r} must end in .safetensors, .pth or '
                     '.pt')
  return {k.removeprefix('module.'): np.asarray(v) for k, v in state.items()}


def _target_path(key: str) -> tuple[str, ...] | None:
  """Maps a torchvision key to (collection, *module path, leaf) or None."""
  m = re.fullmatch(r'(conv1|bn1)\.(\w+)', key)
  if m:
    prefix = ('stem', m.group(1))
    layer, field = m.group(1), m.group(2)
  else:
    m = re.fullmatch(r'layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)',
                     key)
    if not m:
      return None
    sub = {'downsample.0': 'downsample_conv',
           'downsample.1': 'downsample_bn'}.get(m.group(3), m.group(3))
    prefix = (f'layer{m.group(1)}_{m.group(2)}', sub)
    layer, field = sub, m.group(4)
  if 'conv' in layer:
    return ('params',) + prefix + ('kernel',) if field == 'weight' else None
  if field not in _BN_FIELDS:
    return None
  collection, leaf = _BN_FIELDS[field]
  return (collection,) + prefix + (leaf,)


def _first_conv(weight: np.ndarray, in_channels: int) -> np.ndarray:
  """Adapts an OIHW RGB kernel to `in_channels` inputs."""
  if weight.shape[1] == in_channels:
    return weight
  if weight.shape[1] != 3:
    raise ValueError(f'conv1.weight has {weight.shape[1]} input channels; '
                     f'can only adapt 3 to in_channels={in_channels}')
  mean = weight.mean(axis=1, keepdims=True) * (3.0 / in_channels)
  return np.repeat(mean, in_channels, axis=1)


def convert_resnet50(state_dict: Mapping[str, np.ndarray], variables: PyTree,
                     in_channels: int) -> tuple[PyTree, ConversionReport]:
  """Copies a torchvision/timm ResNet-50 state dict into a model's backbone.

  Args:
    state_dict: key -> array, as from `load_state_dict`.
    variables: {'params', 'batch_stats'} of a model with a `backbone` ResNet
      submodule (SkeletonMapNet, PoseRegressor) or of a bare ResNet. Stacked
      hypothesis variables (leading axis H) receive the same weights in every
      hypothesis.
    in_channels: the model's input channels (3, or 6 for skeleton maps).

  Returns:
    (new variables, report). Only the backbone's leaves change; they keep
    their dtype. A shape mismatch raises ValueError naming the key.
  """
  flat = traverse_util.flatten_dict(dict(variables))
  has_backbone = any(len(p) > 1 and p[1] == 'backbone' for p in flat)
  base = ('backbone',) if has_backbone else ()
  backbone = {p for p in flat if p[1:1 + len(base)] == base}
  if not backbone:
    raise ValueError('variables contain no ResNet backbone to fill')

  filled, unexpected, ignored = set(), [], []
  for key in sorted(state_dict):
    target = _target_path(key)
    path = None if target is None else (target[0],) + base + target[1:]
    if path is None or path not in flat:
      (ignored if _IGNORED.search(key) else unexpected).append(key)
      continue
    value = np.asarray(state_dict[key], np.float32)
    if value.ndim == 4:
      if key == 'conv1.weight':
        value = _first_conv(value, in_channels)
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    old = flat[path]
    if old.shape == value.shape:
      new = jnp.asarray(value, old.dtype)
    elif old.shape[1:] == value.shape:
      new = jnp.broadcast_to(jnp.asarray(value, old.dtype), old.shape)
    else:
      raise ValueError(f'state dict entry {key!r} has shape {value.shape} '
                       f'(after conversion) but {"/".join(path)} has '
                       f'{old.shape}')
    flat[path] = new
    filled.add(path)
  missing = tuple('/'.join(p) for p in sorted(backbone - filled))
  report = ConversionReport(missing, tuple(unexpected), tuple(ignored))
  return traverse_util.unflatten_dict(flat), report
