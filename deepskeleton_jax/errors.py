"""Errors that are the user's to fix, which the command line prints as one line.

`cli.py` (behind `run.py` and `deepskeleton-jax`) prints a `UserError` as
`error: <message>` on stderr, without a traceback, and exits with status 2;
anything else is an internal error and keeps its traceback. Messages say what was wrong, where (the flag, config key
or file) and what was expected. Each class also derives from the built-in
exception it refines, so `except ValueError` or `except FileNotFoundError`
still catches it.
"""

import contextlib
import sys
from typing import Iterator


class UserError(Exception):
  """Bad input from the user: a flag, a config value, a file, a missing build."""


class ConfigError(UserError, ValueError):
  """A config value or flag is invalid (the message names the key)."""


class InputError(UserError, ValueError):
  """An input file (dataset release, image, video, detections) is missing or malformed."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
  """A stage that the command needs has no checkpoint in the workdir."""


@contextlib.contextmanager
def one_line(exit_code: int = 2) -> Iterator[None]:
  """Prints a `UserError` as `error: <message>` on stderr and exits, no traceback.

  Args:
    exit_code: the exit status for a user error.

  Yields:
    Nothing. Other exceptions pass through with their tracebacks.
  """
  try:
    yield
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(exit_code)


@contextlib.contextmanager
def config_keys_checked(argv: list[str]) -> Iterator[None]:
  """Turns ml_collections' error for an override of a missing key into a `ConfigError`.

  `config_flags.DEFINE_config_file` applies `--config.<key>=value` overrides
  when it is defined and when flags are parsed; a key the config lacks raises
  a bare AttributeError/KeyError there.

  Args:
    argv: the command line (to name the offending flag).

  Yields:
    Nothing.
  """
  try:
    yield
  except (AttributeError, KeyError) as e:
    key = str(e).strip('"\'')
    bad = [a for a in argv[1:] if a.startswith('--config.') and
           key in a.split('=')[0].split('.')]
    raise ConfigError(
        f'flag {bad[0] if bad else "--config.<key>"}: the config has no key {key!r} '
        '(the config file and its groups define the keys; see --helpfull)') from None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override as one `error:` line.

  For `app.run(main, flags_parser=parse_flags)`: a bad value (`--mode=x`,
  `--config.train.batch_size=abc`) or an override of a key the config does not
  have (`--config.trian.batch_size=4`) prints what was wrong and exits with 2.

  Args:
    argv: the command line.

  Returns:
    The arguments left after the flags.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  with one_line():
    try:
      with config_keys_checked(argv):
        return flags.FLAGS(argv)
    except flags.Error as e:
      raise UserError(str(e)) from None
