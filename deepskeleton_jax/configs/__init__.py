"""The experiment configs, importable as `deepskeleton_jax.configs.<name>`.

In a checkout the files live in the repository's top-level `configs/` folder
and this package's `__path__` points there; an installed wheel holds them in
this package's own folder (pyproject's package-dir mapping), where this file is
not installed. `cli.resolve_config` turns `--config=demo` into the file's path
either way.
"""

import pathlib

__path__ = [str(pathlib.Path(__file__).resolve().parents[2] / 'configs')]  # pylint: disable=invalid-name
