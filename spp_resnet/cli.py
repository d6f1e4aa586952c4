"""What the command-line entry points share: console logging and one-line user errors."""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import sys
from typing import Callable, NoReturn

from absl import app, flags, logging


def _quiet_orbax(record) -> bool:
  """Orbax logs each step of every save at INFO; keep its warnings and errors."""
  return record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname


def configure_logging() -> None:
  """INFO to the console (progress, metrics), without Orbax's per-save chatter."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)


def _user_errors() -> tuple[type[Exception], ...]:
  """What the user can fix: a config value, a missing or unusable file (dataset, weights,
  checkpoint). Imported only once an error is raised: they pull in TFDS and Orbax."""
  # pylint: disable=g-import-not-at-top
  from spp_resnet.config_validation import ConfigError
  from spp_resnet.data.builders import BuildError
  from spp_resnet.training.checkpoint import CheckpointError
  from spp_resnet.weights.sources import WeightsError
  return ConfigError, FileNotFoundError, BuildError, CheckpointError, WeightsError


@contextlib.contextmanager
def exit_on_user_error(*errors: type[Exception]):
  """A user error (`_user_errors`) or one of `errors` -> 'error: ...' and exit code 2."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # re-raised unless a user error
    if isinstance(e, (*_user_errors(), *errors)):
      _exit(str(e))
    raise


def _exit(message: str) -> NoReturn:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _unknown_field_message(error: Exception, argv: list[str]) -> str:
  """'--config.a.bx=1: config has no field 'bx' (did you mean 'b'?)' from ml_collections."""
  root = error
  while root.__context__ is not None:
    root = root.__context__
  key = str(root.args[0]) if root.args else '?'
  arg = next((a for a in argv if a.startswith('--config.') and
              re.search(rf'\.{re.escape(key)}(=|$)', a)), None)
  hint = re.search(r'Did you mean \\?"([^"\\]+)', str(error))
  return (f'{arg or "--config...."}: the config has no field {key!r}'
          + (f' (did you mean {hint.group(1)!r}?)' if hint else ''))


def last_overrides_win(argv: list[str]) -> list[str]:
  """Drops all but the last `--config.FIELD=` of each field.

  ml_collections appends repeated overrides of a tuple field ('(16,16)' then '16' gave
  (16, 16, 16)); for every other flag the last one wins, so here too.
  """
  def field(arg: str) -> str | None:
    return arg.split('=', 1)[0] if arg.startswith('--config.') and '=' in arg else None

  last = {field(a): i for i, a in enumerate(argv) if field(a)}
  return [a for i, a in enumerate(argv) if field(a) is None or last[field(a)] == i]


def config_overrides(argv: list[str], config) -> dict:
  """{field: parsed value} of the `--config.FIELD=VALUE` flags given on the command line."""
  overrides = {}
  for arg in argv:
    if arg.startswith('--config.') and '=' in arg:
      field = arg[len('--config.'):].split('=', 1)[0]
      node = config
      for part in field.split('.'):
        node = node[part]
      overrides[field] = node
  return overrides


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where a bad `--config.x=` override is one line, not a traceback,
  and the last override of a field wins."""
  argv = last_overrides_win(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: override of a missing field
    _exit(_unknown_field_message(e, argv))


COMPILATION_CACHE_ENV = 'SPP_RESNET_COMPILATION_CACHE'


def enable_compilation_cache() -> str:
  """XLA's persistent compilation cache, so a repeated config, an evaluation or a sweep
  point with the shapes of an earlier one skips compiling (tens of seconds a step on a
  CPU). Directory: $SPP_RESNET_COMPILATION_CACHE (empty: off), default
  ~/.cache/spp_resnet/jax. Returns the directory ('' when off)."""
  path = os.environ.get(COMPILATION_CACHE_ENV, '~/.cache/spp_resnet/jax')
  if not path:
    return ''
  import jax  # pylint: disable=g-import-not-at-top  # not before --help
  path = os.path.expanduser(path)
  jax.config.update('jax_compilation_cache_dir', path)
  # Cache every compile that takes a moment; the many tiny ones are cheaper to redo.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  return path


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with the console logging, flag errors and compilation cache of
  every entry point."""
  configure_logging()

  def main_with_cache(argv):
    enable_compilation_cache()
    return main(argv)

  app.run(main_with_cache, flags_parser=parse_flags)
