r"""DeepSkeleton-JAX's command line in a checkout (`deepskeleton-jax` once installed).

  python run.py            # the demo, end to end
  python run.py --help     # modes, configs, flags

The program lives in `deepskeleton_jax/cli.py`.
"""

from deepskeleton_jax import cli

if __name__ == '__main__':
  cli.run()
