"""ResNet v1.5 bottleneck backbone (ResNet-50 by default) returning stage features.

Layout and padding follow torchvision's `resnet50` exactly (stem conv 7x7/2 pad 3,
max pool 3x3/2 pad 1, stride on the 3x3 conv of each bottleneck, 1x1/s projection
shortcut), so ImageNet weights converted by `pretrained.py` give the same
features. Module names mirror torchvision's (`stem/conv1`, `layer3_2/bn2`,
`layer1_0/downsample_conv`, ...) so the conversion is a renaming.

Computation runs in `dtype` (e.g. bfloat16); parameters and BatchNorm statistics
are float32. The full-size model has 23,508,032 parameters (torchvision's
ResNet-50 less its classifier).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision's initialisation: kaiming_normal_(mode='fan_out', relu).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

STAGE_NAMES = ('res2c', 'res3d', 'res4f', 'res5c')
# Every stage output must be downsampled exactly, so the input side must be a
# multiple of the total stride.
TOTAL_STRIDE = 32

ModuleDef = Callable[..., nn.Module]


def batch_norm(train: bool, dtype: Any, **kwargs) -> ModuleDef:
  """BatchNorm with torchvision's epsilon and momentum (0.1 there = 0.9 here).

  Args:
    train: use batch statistics and update the running ones.
    dtype: computation dtype; parameters and statistics stay float32.
    **kwargs: more `nn.BatchNorm` attributes (e.g. `scale_init`).

  Returns:
    A partial `nn.BatchNorm` constructor.
  """
  return functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5, dtype=dtype,
                           param_dtype=jnp.float32, **kwargs)


def conv(dtype: Any) -> ModuleDef:
  """Bias-free convolution in `dtype` with float32 parameters."""
  return functools.partial(nn.Conv, use_bias=False, dtype=dtype,
                           param_dtype=jnp.float32, kernel_init=conv_init)


class Stem(nn.Module):
  """conv1 7x7/2 (pad 3) + BN + ReLU + max pool 3x3/2 (pad 1), as torchvision."""
  width: int
  train: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = conv(self.dtype)(self.width, (7, 7), strides=(2, 2),
                         padding=((3, 3), (3, 3)), name='conv1')(x)
    x = batch_norm(self.train, self.dtype)(name='bn1')(x)
    x = nn.relu(x)
    # Padding with -inf (reduce_window's init value) as torch's MaxPool2d.
    return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class BottleneckBlock(nn.Module):
  """v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (4x), projection when needed.

  The last BN scale starts at zero (each block starts as the identity, as in the
  Flax ImageNet example and "Goyal et al. 2017"); converted weights override it.
  """
  filters: int
  strides: int
  train: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cv = conv(self.dtype)
    bn = batch_norm(self.train, self.dtype)
    s = (self.strides, self.strides)
    y = nn.relu(bn(name='bn1')(cv(self.filters, (1, 1), name='conv1')(x)))
    y = cv(self.filters, (3, 3), strides=s, padding=((1, 1), (1, 1)),
           name='conv2')(y)
    y = nn.relu(bn(name='bn2')(y))
    y = cv(4 * self.filters, (1, 1), name='conv3')(y)
    y = batch_norm(self.train, self.dtype,
                   scale_init=nn.initializers.zeros)(name='bn3')(y)
    if self.strides != 1 or x.shape[-1] != 4 * self.filters:
      x = cv(4 * self.filters, (1, 1), strides=s, name='downsample_conv')(x)
      x = bn(name='downsample_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Bottleneck ResNet v1.5 without classifier.

  Attributes:
    stage_sizes: number of blocks in each of the 4 stages ((3, 4, 6, 3) = ResNet-50).
    width: stem width; stage i has bottleneck width `width * 2**i` and output
      `4 * width * 2**i` channels, so `pooled` has `32 * width`.
    in_channels: expected input channels (3 for RGB, 6 for skeleton maps).
    dtype: computation dtype (bfloat16 for speed); parameters stay float32.
    remat: rematerialise every block in the backward pass (saves memory).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  in_channels: int = 3
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Runs the backbone.

    Args:
      x: [B, H, W, in_channels] images; H and W multiples of 32.
      train: use batch statistics (and update running ones when
        `batch_stats` is mutable).

    Returns:
      Dict with 'res2c', 'res3d', 'res4f', 'res5c' (stage outputs, strides 4, 8,
      16, 32, in `dtype`) and 'pooled' [B, 32 * width] float32.
    """
    check_input(x, self.in_channels, 'x')
    if len(self.stage_sizes) != len(STAGE_NAMES):
      raise ValueError(f'stage_sizes must have {len(STAGE_NAMES)} entries, got '
                       f'{tuple(self.stage_sizes)}')
    block_cls = BottleneckBlock
    if self.remat:
      block_cls = nn.remat(BottleneckBlock)
    x = Stem(self.width, train, self.dtype, name='stem')(x.astype(self.dtype))
    features = {}
    for i, (num_blocks, stage_name) in enumerate(zip(self.stage_sizes,
                                                     STAGE_NAMES)):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2**i, strides, train, self.dtype,
                      name=f'layer{i + 1}_{j}')(x)
      features[stage_name] = x
    features['pooled'] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return features


# The full-size network (the defaults of `ResNet`).
ResNet50 = ResNet


def check_input(x: jax.Array, in_channels: int, name: str) -> None:
  """Raises ValueError unless x is [B, H, W, in_channels] with H, W % 32 == 0.

  Args:
    x: the array to check (shapes are static, so this works under jit).
    in_channels: expected last dimension.
    name: argument name for the message.
  """
  if x.ndim != 4:
    raise ValueError(f'{name} must be [B, H, W, {in_channels}], got shape '
                     f'{tuple(x.shape)}')
  if x.shape[-1] != in_channels:
    raise ValueError(f'{name} has {x.shape[-1]} channels but the model expects '
                     f'in_channels={in_channels} (shape {tuple(x.shape)})')
  if x.shape[1] % TOTAL_STRIDE or x.shape[2] % TOTAL_STRIDE:
    raise ValueError(f'{name} height and width must be multiples of '
                     f'{TOTAL_STRIDE}, got shape {tuple(x.shape)}')
