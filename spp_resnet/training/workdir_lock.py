"""One run at a time per workdir: WORKDIR/run.lock holds the holder's host and pid.

Two runs writing one workdir race on checkpoints and interleave metric rows. The lock is
created atomically (O_EXCL); a second run refuses in one line naming the holder. A lock
left by a killed run (same host, pid no longer alive) is taken over with a warning. In a
multi-host job process 0 holds it for all.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket

from absl import logging

LOCK_FILE = 'run.lock'


class WorkdirError(RuntimeError):
  """The workdir cannot be used (not writable, or held by another run)."""


class WorkdirLockedError(WorkdirError):
  """Another live run holds the workdir."""


def check_writable(workdir: str) -> None:
  """Creates WORKDIR if needed and proves it writable, before any work is done in it."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w', encoding='utf-8'):
      pass
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f'--workdir={workdir} is not writable ({e.strerror or e}): choose '
                       'a directory this user can write to.') from e


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _try_create(path: str, holder: dict) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w', encoding='utf-8') as f:
    json.dump(holder, f)
  return True


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True):
  """Holds WORKDIR/run.lock for the duration of the block."""
  if not enabled:
    yield
    return
  check_writable(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  me = {'host': socket.gethostname(), 'pid': os.getpid()}
  if not _try_create(path, me):
    try:
      with open(path, encoding='utf-8') as f:
        other = json.load(f)
    except (OSError, ValueError):
      other = {}
    same_host = other.get('host') == me['host']
    if same_host and isinstance(other.get('pid'), int) and not _alive(other['pid']):
      logging.warning('Taking over %s from a run that is gone (pid %d).', path, other['pid'])
      os.remove(path)
      if not _try_create(path, me):
        raise WorkdirLockedError(f'{workdir} is being used by another run that just started.')
    else:
      raise WorkdirLockedError(
          f'{workdir} is in use by another run (pid {other.get("pid", "?")} on '
          f'{other.get("host", "?")}, {path}); wait for it to finish, use another --workdir, '
          'or delete the lock file if that run is gone.')
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.remove(path)
