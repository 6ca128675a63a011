r"""The synthetic demo: what `python run.py` runs with no flags (~16 min on 2 CPU cores).

  python run.py                     # same as:
  python run.py --config=configs/demo.py --workdir=workdir/demo --mode=all

Builds a synthetic set (procedural people over clutter, no download), trains
Direct RGB, a 2-hypothesis SkeletonMapNet and its regressors, a small
hourglass for the 2D detections used in matching, then evaluates and writes
workdir/demo/eval/report.md with the Table 2-style rows and figures.
Models are narrow ResNets at 64-px input so everything fits a laptop CPU;
stick widths are larger than the paper's 5-15 because the maps are 16 px.

Where it departs from the paper, and why (each measured on this set):
- cameras within +-60 deg of the person's front and 0-20 deg pitch
  (Human3.6M-like) instead of all around: a tiny model cannot learn the
  front/back ambiguity of an all-around set in minutes;
- Adam with a cosine schedule, no weight decay, a few thousand steps;
- the regressors first see maps rendered from the labels (`gt_steps`), then a
  50/50 mix of rendered and predicted maps (`gt_fraction`): trained only on
  sharp rendered maps they transfer poorly to a small SkeletonMapNet's blurry
  maps (316 vs 150 mm), trained only on predicted maps the GT Ske rows (the
  paper's upper bound) came out worse than the predicted ones.
"""

from deepskeleton_jax.training import config_lib


def get_config(arg=None):
  """Returns the demo config (arg unused)."""
  del arg
  c = config_lib.base_config()
  c.data.name = 'synthetic'
  c.data.data_dir = './workdir/tensorflow_datasets'
  c.data.builder_kwargs = {'num_train': 3000, 'num_holdout': 200, 'num_test': 300,
                           'crop_size': 96, 'seed': 0, 'camera_yaw_deg': 60.0,
                           'camera_pitch_min_deg': 0.0, 'camera_pitch_max_deg': 20.0}
  c.data.input_size = 64
  # (c, l): the base hypothesis (1.0, 20) plus one with a wider crop and sticks.
  c.hypotheses.crop_scales = (1.0, 1.25)
  c.hypotheses.stick_widths = (20.0, 30.0)
  c.hypotheses.base = 0
  c.stages = 'direct_rgb,skeleton_net,regressor,hourglass'
  small = dict(stage_sizes=(1, 1, 1, 1), width=16)
  for name in ('skeleton_net', 'regressor', 'direct_rgb', 'ensemble'):
    c[name].model.update(small)
    c[name].train.update(batch_size=32, num_steps=500, log_every=25, checkpoint_every=250,
                         optimizer='adam', learning_rate=2e-3, weight_decay=0.0,
                         schedule='cosine')
  c.skeleton_net.model.decoder_width = 32
  c.skeleton_net.train.update(batch_size=16, num_steps=1000, log_every=50,
                              checkpoint_every=500)
  c.regressor.input_size = 32
  c.regressor.input = 'predicted'
  c.regressor.gt_steps = 800
  c.regressor.gt_fraction = 0.5
  c.regressor.train.update(num_steps=1300, checkpoint_every=650, log_every=50)
  c.hourglass.model.update(num_stacks=1, num_features=32, depth=3)
  c.hourglass.sigma = 2.0  # 16-px heatmaps: wider Gaussians train faster
  c.hourglass.input_size = 64
  c.hourglass.train.update(batch_size=32, num_steps=800, log_every=50, checkpoint_every=400,
                           learning_rate=3e-3, schedule='cosine')
  c.eval.batch_size = 50
  c.eval.detections = 'hourglass'
  c.eval.num_figures = 3
  c.benchmark.batch_sizes = (32,)
  return c
