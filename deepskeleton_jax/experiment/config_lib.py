"""Building blocks for the experiment configs in configs/, and their validation.

A config (an `ml_collections.ConfigDict`) has these groups:
  data:        dataset and input pipeline (see input_pipeline.py).
  hypotheses:  `crop_scales` and `stick_widths` (paired, one entry per
               hypothesis p_i = (c_i, l_i)); widths are in 224-px input pixels.
  stages:      comma-separated stages that `--mode=train` trains, in order.
  <stage>:     one group per stage (skeleton_net, regressor, direct_rgb,
               ensemble, hourglass, lifting) with `model` and `train`.
  eval:        what `--mode=eval` compares and where detections come from.
  matching:    how the pipeline picks a hypothesis (reprojection, maps, both).
  refine:      render-and-compare refinement of the picked pose (0 steps = off).
  predict:     `--mode=predict` inputs.
  benchmark:   `--mode=benchmark` settings.
  parallel:    mesh layout and multi-host initialisation.
"""

from __future__ import annotations

import ml_collections

from deepskeleton_jax import errors

STAGES = ('skeleton_net', 'regressor', 'direct_rgb', 'ensemble', 'hourglass',
          'lifting')
DATASETS = ('synthetic', 'human36m', 'mpii', 'bvh_mocap')


def resnet_model(width: int = 64, stage_sizes=(3, 4, 6, 3), **extra) -> ml_collections.ConfigDict:
  """Model group for the ResNet-based stages."""
  model = ml_collections.ConfigDict({
      'stage_sizes': tuple(stage_sizes),
      'width': width,
      'dtype': 'float32',   # or 'bfloat16' (float32 parameters and BN statistics)
      'remat': False,
      'pretrained': '',     # path to a torchvision/timm ResNet-50 .safetensors/.pth
  })
  model.update(extra)
  return model


def train_group(batch_size: int, num_steps: int, learning_rate: float,
                **extra) -> ml_collections.ConfigDict:
  """Training group: SGD with momentum 0.9 and weight decay 2e-4 (the paper's)."""
  train = ml_collections.ConfigDict({
      'batch_size': batch_size,       # global batch over all devices and hosts
      'num_steps': num_steps,
      'optimizer': 'sgd',             # 'sgd' (paper) or 'adam'
      'learning_rate': learning_rate,
      'momentum': 0.9,
      'weight_decay': 2e-4,
      'schedule': 'step',             # 'step', 'plateau', 'cosine' or 'constant'
      'decay_factor': 0.1,            # step/plateau: multiply the rate by this
      'decay_steps': (),              # step: steps at which to decay
      'plateau_patience': 2,          # plateau: evaluations without improvement
      'plateau_every': 1000,          # plateau: steps between validation losses
      'plateau_examples': 1024,       # plateau: fixed random subset of data.val_split
      'warmup_steps': 0,
      'grad_accum': 1,                # micro-batches per step
      'nonfinite': 'stop',            # 'stop' or 'skip' a non-finite update
      'log_every': 50,
      'checkpoint_every': 500,
      'keep_checkpoints': 3,          # the newest N checkpoints are kept; 0 keeps all
      'seed': 0,
  })
  train.update(extra)
  return train


def data_group() -> ml_collections.ConfigDict:
  """Dataset and input pipeline (see data/input_pipeline.py and data/registry.py)."""
  return ml_collections.ConfigDict({
      'name': 'human36m',
      'data_dir': '~/tensorflow_datasets',
      'manual_dir': '',
      'builder_kwargs': ml_collections.ConfigDict(),
      'train_split': 'train',
      # A held-out part of the training data (every builder writes 'holdout'):
      # the plateau schedule's validation loss. Training never opens eval_split.
      'val_split': 'holdout',
      'eval_split': 'test',       # opened only by --mode=eval
      'input_size': 224,
      'crop_scales': (1.0,),      # filled from the hypotheses by finalize()
      'augment': False,
      'worker_count': 0,
      'seed': 0,
      # Dataset builds (--mode=prepare): 0 = sequential in this process; N > 0 =
      # Apache Beam's DirectRunner with N local worker processes.
      'beam_num_workers': 0,
      'beam_options': '',         # e.g. '--runner=FlinkRunner --flink_master=...'
  })


def _stage_groups() -> dict[str, ml_collections.ConfigDict]:
  """One group per stage: the paper's models and optimisers."""
  return {
      'skeleton_net': ml_collections.ConfigDict({
          'model': resnet_model(decoder_width=256),
          # 'caffe': the paper's loss (per head, sigmoid cross-entropy summed over
          # pixels and channels / batch, summed over heads), for its rate 1e-5;
          # 'mean': the mean over pixels, channels, batch and heads.
          'loss': 'caffe',
          'train': train_group(batch_size=12, num_steps=200_000, learning_rate=1e-5),
      }),
      'regressor': ml_collections.ConfigDict({
          'model': resnet_model(),
          # 'euclidean': the paper's Caffe EuclideanLoss (sum of squares / 2N, in
          # units of the pose std), for its rate 1e-2; 'distance': the mean
          # per-joint Euclidean distance. The same key in direct_rgb, ensemble, lifting.
          'loss': 'euclidean',
          'input': 'gt',        # 'gt': maps rendered from labels; 'predicted': SkeletonMapNet
          'gt_fraction': 0.0,   # input='predicted': this part of each batch gets 'gt' maps
          'gt_steps': 0,        # input='predicted': the first gt_steps steps see 'gt' maps only
          # The split those rendered-map steps read ('': data.train_split), e.g.
          # the synthetic set's image-free 'poses' (labels only, many more poses).
          'gt_split': '',
          'input_size': 224,    # maps are resized to this before regression
          'train': train_group(batch_size=32, num_steps=200_000, learning_rate=1e-2),
      }),
      'direct_rgb': ml_collections.ConfigDict({
          'model': resnet_model(),
          'loss': 'euclidean',
          'train': train_group(batch_size=32, num_steps=200_000, learning_rate=1e-2),
      }),
      'ensemble': ml_collections.ConfigDict({
          # Regressors of the base hypothesis, each with its own initialisation
          # and data order (Table 6: 11 on Human3.6M; Table 9: 18 on MPII).
          'num_runs': 11,
          'model': resnet_model(),
          'loss': 'euclidean',
          'train': train_group(batch_size=32, num_steps=200_000, learning_rate=1e-2),
      }),
      'hourglass': ml_collections.ConfigDict({
          'model': ml_collections.ConfigDict({
              'num_stacks': 2, 'num_features': 256, 'depth': 4, 'dtype': 'float32'}),
          'input_size': 256,
          'sigma': 1.0,
          # 'mse': Newell's MSE to Gaussian heatmaps (`sigma`), argmax decoding;
          # 'integral': L1 on the soft-argmax of the maps (Sun et al. 2018).
          'loss': 'mse',
          'train': train_group(batch_size=16, num_steps=100_000, learning_rate=2.5e-4,
                               optimizer='adam', weight_decay=0.0),
      }),
      'lifting': ml_collections.ConfigDict({
          'model': ml_collections.ConfigDict({
              'hidden': 1024, 'num_blocks': 2, 'dropout_rate': 0.5}),
          'loss': 'distance',   # not the paper's network; Adam (scale-invariant)
          'train': train_group(batch_size=64, num_steps=50_000, learning_rate=1e-3,
                               optimizer='adam', weight_decay=0.0),
      }),
  }


def _predict_group() -> ml_collections.ConfigDict:
  """Settings of `--mode=predict`: images, video, several people, outputs."""
  return ml_collections.ConfigDict({
      'images': '',   # comma-separated image paths
      'boxes': '',    # optional 'x0 y0 x1 y1' per image (or the video's first frame), ';'-separated
      'output_dir': '',
      # Video (a file OpenCV reads, or a folder of frames); see predict_video.py.
      'video': '',
      # People per frame: rows 'frame id x0 y0 x1 y1' (CSV) or JSON entries
      # {"frame", "id", "box"}; or one 'x0 y0 x1 y1' row per frame (id 0).
      'boxes_file': '',
      # 2D keypoints of other tools (JSON: COCO-17 "keypoints" or our 16
      # "joints", per person and frame); they give the boxes and the 2D.
      'keypoints_file': '',
      'max_people': 1,        # tracking (no file): people followed at most
      # Also write each tracked person's motion as <name>_<id>.bvh (video only;
      # inference/bvh_writer.py: Y up, ZXY rotation channels, helpers per bone).
      'bvh': False,
      'max_lost_frames': 25,  # a person unseen for more frames ends its track
      # Camera of the root's camera-space position: 'fx fy cx cy' (frame
      # pixels), else a pinhole with this field of view across the longer
      # frame side, centred.
      'intrinsics': '',
      'fov_deg': 60.0,
      'box_margin': 1.25,     # tracking: next box = 2D joints' box x this
      'min_confidence': 0.2,  # mean detection confidence below this: no person
      'batch_size': 8,        # frames per jitted call
      'fps': 25.0,            # frame rate of a folder of frames (or a video that gives none)
      # Tracking runs batches of frames that share the first frame's box; a
      # frame is kept while the box tracked from its previous frame overlaps
      # that box by at least this IoU, else the rest is rerun (1.0: one frame
      # at a time). See predict_video.py.
      'track_min_iou': 0.8,
      # Tracking's start and restarts (no config.predict.boxes, or the person
      # lost): the most confident of the whole frame and square windows of
      # these sides (fractions of the frame's shorter side, half-overlapping)
      # gives the box. () = the whole frame itself.
      'search_scales': (1.0, 0.7, 0.5),
      'smoothing': 'one_euro',  # 'one_euro', 'savgol' or 'none'
      # One-Euro: cutoff (Hz) = min_cutoff + beta x speed, the speed in person
      # sizes per second (see smoothing.py; beta 1.0 measured best on the demo).
      'one_euro_min_cutoff': 1.0,
      'one_euro_beta': 1.0,
      'savgol_window': 9,
      'savgol_order': 2,
  })


def _mode_groups() -> dict[str, ml_collections.ConfigDict]:
  """Settings of the eval, predict, benchmark modes and of the device layout."""
  return {
      'eval': ml_collections.ConfigDict({
          'batch_size': 32,
          'detections': 'hourglass',  # 'hourglass', 'ground_truth' or a file path
          # A file's pixel convention (docs/evaluation.md, Detection files): 'auto'
          # (MPII formats 'one_based' as the official evaluation reads them,
          # VideoPose3D 'continuous'), 'one_based', 'zero_based' or 'continuous'.
          'detections_convention': 'auto',
          'max_examples': 0,          # 0: the whole split
          'num_figures': 4,
      }),
      'predict': _predict_group(),
      'export': ml_collections.ConfigDict({
          # 'jax' (model.jax, jax.export) or 'onnx' (model.onnx, ONNX Runtime;
          # needs the optional onnx package: requirements-onnx.txt).
          'format': 'jax',
          'platforms': ('cpu', 'cuda'),  # format 'jax': lowered for each; one artifact
          'output_dir': '',              # default WORKDIR/export
      }),
      'benchmark': ml_collections.ConfigDict({
          'batch_sizes': (32,),
          'dtypes': ('float32',),
          'remat': (False,),              # e.g. (False, True): memory with/without remat
          'grad_accum': (1,),             # e.g. (1, 4): micro-batches per step
          'steps': 10,
          'stages': 'regressor,skeleton_net',
          # Compile each train step and report XLA's step memory, run nothing
          # (with batch size 0 = each stage's own train.batch_size).
          'compile_only': False,
      }),
      'parallel': ml_collections.ConfigDict({
          'hyp_axis': 1,                  # devices along the 'hyp' mesh axis
          # How stacked hypotheses run: 'vmap' (batched; grouped convolutions,
          # shardable over 'hyp'), 'loop' (unrolled; 6.5x faster on CPU) or
          # 'auto' (loop on CPU, vmap on accelerators).
          'hyp_map': 'auto',
          'distributed': 'auto',          # 'auto', 'yes' or 'no'
          'coordinator_address': '',
          'num_processes': 0,
          'process_id': -1,
          # A process whose heartbeat stops this long counts as dead: the others
          # then fail with an error naming it (instead of waiting at a collective).
          'heartbeat_timeout_s': 100,
      }),
  }


def _render_compare_groups() -> dict[str, ml_collections.ConfigDict]:
  """Hypothesis selection and refinement, everywhere the pipeline runs.

  See inference/render_compare.py: `matching.method` 'reprojection' (the
  paper's Eq. 1), 'maps' (cross-entropy of each hypothesis' rendered maps
  against the predicted ones) or 'both' ((px / crop side)^2 + maps_weight x
  map score); `refine` moves the selected pose by Adam steps on the
  render-and-compare loss.
  """
  return {
      'matching': ml_collections.ConfigDict({
          'method': 'reprojection',
          'maps_weight': 1.0,
          'temperature': 0.25,        # soft rasterizer edge, map pixels
          'depth_temperature': 10.0,  # soft rasterizer depth order, mm
      }),
      # Refinement of the selected pose by Adam steps on the render-and-compare loss.
      'refine': ml_collections.ConfigDict({
          'steps': 0,                 # 0: off
          'learning_rate': 5.0,       # mm per step (Adam)
          'variables': 'joints',      # 'joints' (3D joints) or 'bones' (directions, lengths kept)
          'maps_weight': 1.0,         # x map cross-entropy
          'reprojection_weight': 100.0,  # x mean squared 2D error in crop sides
          'bone_weight': 10.0,        # x mean squared relative bone-length change
          'anchor_weight': 1.0,       # x mean squared move from the start, in mean bone lengths
      }),
  }


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment (the paper's Human3.6M setting)."""
  c = ml_collections.ConfigDict()
  c.data = data_group()
  c.hypotheses = ml_collections.ConfigDict({
      'crop_scales': (1.0,),
      'stick_widths': (10.0,),
      'base': 0,  # index of the paper's w/o Mul-Hyp hypothesis (c=1.0, l=10)
  })
  c.stages = 'skeleton_net,regressor'
  for name, group in {**_stage_groups(), **_mode_groups(),
                      **_render_compare_groups()}.items():
    c[name] = group
  return c


def hypothesis_list(config: ml_collections.ConfigDict) -> list[tuple[float, float]]:
  """Returns the (crop scale, stick width) pairs of the config's hypotheses."""
  crops = tuple(float(x) for x in config.hypotheses.crop_scales)
  widths = tuple(float(x) for x in config.hypotheses.stick_widths)
  if len(crops) == 1 and len(widths) > 1:
    crops = crops * len(widths)
  if len(widths) == 1 and len(crops) > 1:
    widths = widths * len(crops)
  if len(crops) != len(widths):
    raise errors.ConfigError(
        'config.hypotheses.crop_scales and config.hypotheses.stick_widths must '
        f'have equal lengths (or one of length 1), got {crops} and {widths}')
  return list(zip(crops, widths))


def _check_losses_and_eval(config: ml_collections.ConfigDict) -> None:
  """The stages' loss choices and the evaluation's sizes and detection convention."""
  _check(config.skeleton_net.loss in ('caffe', 'mean'), 'skeleton_net.loss',
         config.skeleton_net.loss, "'caffe' or 'mean'")
  for stage in ('regressor', 'direct_rgb', 'ensemble', 'lifting'):
    _check(config[stage].loss in ('euclidean', 'distance'), f'{stage}.loss',
           config[stage].loss, "'euclidean' or 'distance'")
  _check(config.eval.batch_size > 0, 'eval.batch_size', config.eval.batch_size,
         'a positive integer')
  _check(config.eval.max_examples >= 0, 'eval.max_examples', config.eval.max_examples,
         'a number of examples (0: the whole split)')
  _check(config.eval.detections_convention in ('auto', 'one_based', 'zero_based', 'continuous'),
         'eval.detections_convention', config.eval.detections_convention,
         "'auto', 'one_based', 'zero_based' or 'continuous'")


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Derives dependent values and validates; call after flag overrides.

  Args:
    config: the loaded config (modified in place).

  Returns:
    The same config.

  Raises:
    errors.ConfigError: naming the offending key and what was expected.
  """
  hyps = hypothesis_list(config)
  scales = sorted({c for c, _ in hyps} | {1.0})
  with config.unlocked():
    config.data.crop_scales = tuple(scales)
  _check(config.data.name in DATASETS, 'data.name', config.data.name,
         f'one of {DATASETS}')
  for key, split in (('data.train_split', config.data.train_split),
                     ('data.val_split', config.data.val_split),
                     ('regressor.gt_split', config.regressor.gt_split)):
    _check(split.split('[')[0] != config.data.eval_split.split('[')[0], key, split,
           f'a split other than data.eval_split={config.data.eval_split!r} (the test '
           'split is opened only by --mode=eval)')
  _check(config.data.beam_num_workers >= 0, 'data.beam_num_workers',
         config.data.beam_num_workers, '0 (sequential build) or a number of workers')
  _check(config.data.input_size % 32 == 0 and config.data.input_size > 0,
         'data.input_size', config.data.input_size, 'a positive multiple of 32')
  for c, w in hyps:
    _check(0.5 <= c <= 3.0, 'hypotheses.crop_scales', c, 'values in [0.5, 3]')
    _check(0 < w <= 64, 'hypotheses.stick_widths', w, 'values in (0, 64]')
  _check(0 <= config.hypotheses.base < len(hyps), 'hypotheses.base',
         config.hypotheses.base, f'an index below {len(hyps)}')
  for stage in stage_list(config):
    train = config[stage].train
    _check(train.batch_size > 0, f'{stage}.train.batch_size', train.batch_size,
           'a positive integer')
    _check(train.batch_size % train.grad_accum == 0, f'{stage}.train.grad_accum',
           train.grad_accum, f'a divisor of the batch size {train.batch_size}')
    _check(train.num_steps > 0, f'{stage}.train.num_steps', train.num_steps, '> 0')
    _check(train.learning_rate > 0, f'{stage}.train.learning_rate',
           train.learning_rate, '> 0')
    _check(train.optimizer in ('sgd', 'adam'), f'{stage}.train.optimizer',
           train.optimizer, "'sgd' or 'adam'")
    _check(train.schedule in ('step', 'plateau', 'cosine', 'constant'),
           f'{stage}.train.schedule', train.schedule,
           "'step', 'plateau', 'cosine' or 'constant'")
    _check(train.nonfinite in ('stop', 'skip'), f'{stage}.train.nonfinite',
           train.nonfinite, "'stop' or 'skip'")
    for key in ('log_every', 'checkpoint_every'):
      _check(train[key] > 0, f'{stage}.train.{key}', train[key], 'a positive number of steps')
    _check(train.keep_checkpoints >= 0, f'{stage}.train.keep_checkpoints',
           train.keep_checkpoints, 'how many of the newest checkpoints to keep (0: all)')
    dtype = config[stage].model.get('dtype', 'float32')
    _check(dtype in ('float32', 'bfloat16'), f'{stage}.model.dtype', dtype,
           "'float32' or 'bfloat16'")
  _check(config.ensemble.num_runs >= 1, 'ensemble.num_runs', config.ensemble.num_runs, '>= 1')
  _check_losses_and_eval(config)
  _check(config.parallel.hyp_map in ('auto', 'vmap', 'loop'), 'parallel.hyp_map',
         config.parallel.hyp_map, "'auto', 'vmap' or 'loop'")
  _check(config.regressor.input in ('gt', 'predicted'), 'regressor.input',
         config.regressor.input, "'gt' or 'predicted'")
  _check(0.0 <= config.regressor.gt_fraction <= 1.0, 'regressor.gt_fraction',
         config.regressor.gt_fraction, 'a fraction in [0, 1]')
  _check(config.regressor.gt_steps >= 0, 'regressor.gt_steps',
         config.regressor.gt_steps, 'a step count >= 0')
  _check(config.regressor.input_size % 32 == 0, 'regressor.input_size',
         config.regressor.input_size, 'a multiple of 32')
  _check_render_compare(config)
  _check(config.hourglass.loss in ('mse', 'integral'), 'hourglass.loss',
         config.hourglass.loss, "'mse' or 'integral'")
  hg_div = 4 * 2 ** config.hourglass.model.depth
  _check(config.hourglass.input_size % hg_div == 0, 'hourglass.input_size',
         config.hourglass.input_size,
         f'a multiple of {hg_div} (4 x 2^hourglass.model.depth)')
  return config


BUILDER_FLAG = '--config.data.builder_kwargs'


def take_builder_flags(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Splits the `--config.data.builder_kwargs[.<name>]` flags off a command line.

  ml_collections can only override keys that the config file sets; these
  flags set any option of the dataset's builder instead, once the config (and
  so `data.name`) is loaded: `registry.set_builder_flags` types and checks
  them against the builder's options.

  Args:
    argv: the command line.

  Returns:
    (the other arguments, [(flag name, value text)] in order); `--flag=value`
    and `--flag value` are both read.

  Raises:
    errors.ConfigError: such a flag without a value.
  """
  rest, taken = [], []
  args = iter(argv)
  for arg in args:
    name, eq, value = arg.partition('=')
    if name != BUILDER_FLAG and not name.startswith(BUILDER_FLAG + '.'):
      rest.append(arg)
      continue
    if not eq:
      value = next(args, None)
      if value is None:
        raise errors.ConfigError(f'flag {name}: expected {name}=VALUE')
    taken.append((name, value))
  return rest, taken
def _check_render_compare(config: ml_collections.ConfigDict) -> None:
  m, r = config.matching, config.refine
  _check(m.method in ('reprojection', 'maps', 'both'), 'matching.method', m.method,
         "'reprojection', 'maps' or 'both'")
  for key, value in (('matching.maps_weight', m.maps_weight),
                     ('matching.temperature', m.temperature),
                     ('matching.depth_temperature', m.depth_temperature),
                     ('refine.maps_weight', r.maps_weight),
                     ('refine.reprojection_weight', r.reprojection_weight),
                     ('refine.bone_weight', r.bone_weight),
                     ('refine.anchor_weight', r.anchor_weight)):
    _check(value >= 0, key, value, 'a number >= 0')
  _check(isinstance(r.steps, int) and r.steps >= 0, 'refine.steps', r.steps,
         'a step count >= 0 (0: no refinement)')
  _check(r.learning_rate > 0, 'refine.learning_rate', r.learning_rate, '> 0 (mm per step)')
  _check(r.variables in ('joints', 'bones'), 'refine.variables', r.variables,
         "'joints' or 'bones'")


def stage_list(config: ml_collections.ConfigDict) -> list[str]:
  """The stages named by `config.stages`, validated."""
  stages = [s.strip() for s in str(config.stages).split(',') if s.strip()]
  for s in stages:
    _check(s in STAGES, 'stages', s, f'comma-separated names from {STAGES}')
  return stages


def _check(ok: bool, key: str, value, expected: str) -> None:
  if not ok:
    raise errors.ConfigError(f'config.{key}={value!r} is invalid: expected {expected}')
