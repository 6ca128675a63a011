"""The benchmark scripts, importable as `deepskeleton_jax.benchmarks.<name>`.

In a checkout they live in the repository's top-level `benchmarks/` folder (run
as `python -m benchmarks.<name>`) and this package's `__path__` points there;
an installed wheel holds them in this package's own folder (pyproject's
package-dir mapping), where this file is not installed. `--mode=benchmark`
(`deepskeleton_jax/training/benchmark.py`) imports them from here, so it works
from the wheel too.
"""

import pathlib

__path__ = [str(pathlib.Path(__file__).resolve().parents[2] / 'benchmarks')]  # pylint: disable=invalid-name
