r"""Tiny config for tests: a 16-image synthetic set, width-4 models, 3 steps.

  python run.py --config=configs/tiny.py --workdir=/tmp/ds_tiny
"""

from deepskeleton_jax.experiment import config_lib


def get_config(arg=None):
  """Returns the tiny test config (arg unused)."""
  del arg
  c = config_lib.base_config()
  c.data.name = 'synthetic'
  c.data.data_dir = './workdir/tensorflow_datasets'
  c.data.builder_kwargs = {'num_train': 16, 'num_test': 8, 'num_holdout': 8, 'crop_size': 48,
                          'seed': 0}
  c.data.input_size = 32
  c.hypotheses.crop_scales = (1.0, 1.25)
  c.hypotheses.stick_widths = (40.0, 60.0)
  c.hypotheses.base = 0
  c.stages = 'skeleton_net,regressor,direct_rgb,hourglass,lifting'
  tiny = dict(stage_sizes=(1, 1, 1, 1), width=4)
  for name in ('skeleton_net', 'regressor', 'direct_rgb', 'ensemble'):
    c[name].model.update(tiny)
    c[name].train.update(batch_size=8, num_steps=3, log_every=1, checkpoint_every=2,
                         optimizer='adam', learning_rate=1e-3, weight_decay=0.0)
  c.skeleton_net.model.decoder_width = 8
  # The project's averaged losses (what these settings were tuned with), not the
  # paper's Caffe sums (docs/deviations.md, "Loss scales").
  c.skeleton_net.loss = 'mean'
  for name in ('regressor', 'direct_rgb', 'ensemble'):
    c[name].loss = 'distance'
  c.regressor.input_size = 32
  c.ensemble.num_runs = 2
  c.hourglass.model.update(num_stacks=1, num_features=8, depth=2)
  c.hourglass.input_size = 32
  c.hourglass.train.update(batch_size=8, num_steps=3, log_every=1, checkpoint_every=2)
  c.lifting.model.update(hidden=16, num_blocks=1)
  c.lifting.train.update(batch_size=8, num_steps=3, log_every=1, checkpoint_every=2)
  c.eval.batch_size = 8
  c.eval.num_figures = 1
  c.eval.detections = 'hourglass'
  c.benchmark.batch_sizes = (8,)
  c.benchmark.steps = 2
  return c
