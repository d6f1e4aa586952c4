"""Data parallelism over every device of every host: one `data` mesh axis.

Parameters and optimizer state are replicated; each global batch is split along its
leading axis over the `data` axis. XLA inserts the gradient all-reduce. This replaces
`jax.pmap` (maintenance mode) with `jax.jit` over a `Mesh` and `NamedSharding`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed() -> None:
  """Joins a multi-host run when the environment describes one.

  On Cloud TPU, SLURM and Open MPI `jax.distributed.initialize()` finds its arguments
  itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  explicit = os.environ.get('JAX_COORDINATOR_ADDRESS')
  auto = any(k in os.environ for k in ('SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE',
                                       'TPU_WORKER_HOSTNAMES', 'CLOUD_TPU_TASK_ID'))
  if explicit:
    jax.distributed.initialize(
        coordinator_address=explicit,
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
  elif auto:
    jax.distributed.initialize()
  else:
    return
  logging.info('Process %d of %d, %d local of %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def create_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Places a host pytree (identical on every process) replicated on all devices."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global, data-sharded array."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
