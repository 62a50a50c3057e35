"""Data-parallel training over MPI: several processes (on one machine or
many) train one model.

``mpiexec -n N pydarknet detector train ...`` runs N ranks of the same
command. ``[net] batch`` stays the global batch: rank r trains on rows
r*batch/N .. (r+1)*batch/N - 1 of every iteration's global batch (the very
images, augmentations and sizes one process would draw), in its own
``subdivisions`` mini-batches. Once per iteration, between the last backward
pass and the update, the C core hands every parameter gradient over as one
run of floats (``dn_net_gradients``) and this module sums it over the ranks
with one MPI all-reduce, with the image count the update divides by; every
rank then makes the same update. So N ranks with ``subdivisions=S`` train the
parameters one process with ``subdivisions=N*S`` trains, up to the order of
float sums. Batch-norm rolling statistics, which each rank moves with its own
mini-batches, are averaged over the ranks at every update, so every rank
holds the same network and rank 0's checkpoints are the run's. With
``sync_bn=1`` ([net], or per [convolutional] layer) batch norm takes its
statistics over every rank's mini-batch (the C layer hands its per-channel
sums over through the reduce hook: two all-reduces forward, one backward), so
N ranks of mini-batch m train what one process of mini-batch N*m trains.

Without MPI (or with one rank) nothing here is used, and mpi4py is never
imported. ``pip install 'pydarknet[mpi]'`` installs mpi4py and an MPI.
"""
import os
import socket
import sys
import time

import numpy as np

from ._native import check, ffi, lib
from .train_checks import TrainError

# the launchers' environment: Open MPI, then MPICH / Intel MPI (Hydra) and PMIx
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
# seconds an all-reduce may wait for the other ranks before the job is ended (a rank stopped or hung); long
# enough for rank 0's -map evaluation, which the others wait through
TIMEOUT_VARIABLE, DEFAULT_TIMEOUT = "PYDARKNET_MPI_TIMEOUT", 3600.0


def launched_size():
    """The number of ranks the MPI launcher started (1 without one)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def pick_device(gpus, dist):
    """The CUDA device this process trains on: None (the CPU), the first of
    `gpus` for one process, or under MPI the one of this rank's turn among
    the ranks of its machine (local rank modulo the devices)."""
    if gpus is None:
        return None
    devices = [gpus] if isinstance(gpus, int) else list(gpus)
    if not devices:
        return None
    return devices[0] if dist is None else devices[dist.local_rank % len(devices)]


def world():
    """The World of this MPI job, or None when not running under MPI with more
    than one rank (then mpi4py is not imported)."""
    size = launched_size()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI  # only under an MPI launcher with several ranks
    except ImportError:
        raise TrainError(f"running under MPI with {size} ranks, but mpi4py is not installed "
                         f"(pip install 'pydarknet[mpi]')") from None
    comm = MPI.COMM_WORLD
    return World(comm, MPI) if comm.Get_size() > 1 else None


class World:
    """The ranks of one training run and the collective steps they take."""

    def __init__(self, comm, mpi):
        self.comm, self._mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        # the rank among the ranks of this machine (they share its devices)
        self.local_rank = comm.Split_type(mpi.COMM_TYPE_SHARED).Get_rank()
        self.error = None          # an exception raised inside the gradient hook
        self._buffer = None
        self._net = None
        self._rolling = None   # the attached network's rolling statistics
        self._handle = ffi.new_handle(self)
        try:
            self.timeout = float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT))
        except ValueError:
            raise TrainError(f"{TIMEOUT_VARIABLE}={os.environ[TIMEOUT_VARIABLE]!r} is not a number of seconds") from None
        self.iteration = 0

    @property
    def leader(self):
        return self.rank == 0

    def rows(self, batch):
        """This rank's rows of a global batch of `batch` images."""
        per = batch // self.size
        return self.rank * per, (self.rank + 1) * per

    def describe(self, device):
        """(rank, host, device) of every rank, gathered on every rank."""
        return self.comm.allgather((self.rank, socket.gethostname(), device))

    def attach(self, net):
        """Sums the gradients over the ranks in every train_batch of `net` (and
        averages its batch-norm rolling statistics, so every rank holds the same
        network and any rank's checkpoint is the run's)."""
        self._net, self._rolling = net, None
        check(lib.dn_net_set_gradient_hook(net._ptr, lib._pydarknet_gradient_hook, self._handle))
        # synchronized batch norm (sync_bn=1 in the cfg): the per-channel sums of every rank's mini-batch
        check(lib.dn_net_set_reduce_hook(net._ptr, lib._pydarknet_reduce_hook, self._handle))

    def detach(self, net):
        check(lib.dn_net_set_gradient_hook(net._ptr, ffi.NULL, ffi.NULL))
        check(lib.dn_net_set_reduce_hook(net._ptr, ffi.NULL, ffi.NULL))
        self._net = self._rolling = None

    def _reduce_sums(self, values, count):
        """sync_bn's per-channel sums (doubles, in the C layer's buffer) summed over the ranks in place."""
        self._allreduce(np.frombuffer(ffi.buffer(values, count * 8), np.float64))

    def _reduce_gradients(self, net_ptr, images):
        n = lib.dn_net_gradient_count(net_ptr)
        if self._buffer is None or self._buffer.size != n:
            self._buffer = np.empty(n, np.float32)
        buf = ffi.from_buffer("float[]", self._buffer)
        check(lib.dn_net_gradients(net_ptr, buf, n, 1))
        self.iteration += 1
        self._allreduce(self._buffer)
        check(lib.dn_net_gradients(net_ptr, buf, n, 0))
        count = np.array([images[0]], np.uint64)
        self._allreduce(count)
        images[0] = int(count[0])
        self.average_rolling_statistics(self._net)

    def _allreduce(self, array):
        """Sums `array` over the ranks in place, waiting at most `timeout` seconds
        (every collective of the training loop goes through here)."""
        self._wait(self.comm.Iallreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM))

    def _wait(self, request):
        """Waits for a non-blocking collective, at most `timeout` seconds."""
        deadline = time.monotonic() + self.timeout
        pause = 0.0001
        while not request.Test():
            if time.monotonic() > deadline:
                raise TrainError(f"an all-reduce of update {self.iteration} got no answer within "
                                 f"{self.timeout:g} s: another rank stopped or hangs ({TIMEOUT_VARIABLE} sets the "
                                 f"limit)")
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def sum(self, value):
        total = np.array([value], np.float64)
        self._allreduce(total)
        return float(total[0])

    def average_rolling_statistics(self, net):
        """Batch norm's rolling mean and variance averaged over the ranks, in one
        all-reduce (every rank calls it; the host copies must be current, as
        dn_net_gradients leaves them)."""
        if self._rolling is None:   # views of the C tensors, valid while the network lives
            self._rolling = [v for layer in net.layers for k, v in layer.params.items() if k.startswith("rolling_")]
        if not self._rolling:
            return
        values = np.concatenate(self._rolling)
        self._allreduce(values)
        values /= self.size
        at = 0
        for v in self._rolling:
            v[:] = values[at:at + v.size]
            at += v.size

    def barrier(self):
        self.comm.Barrier()

    def abort(self, error):
        """A failure on this rank ends every rank (the others would wait for it in
        the next all-reduce forever): the error is printed, naming the rank, and
        the MPI job is aborted with status 1."""
        text = str(error) if isinstance(error, TrainError) else f"{type(error).__name__}: {error}"
        sys.stderr.write(f"pydarknet: error: rank {self.rank} of {self.size} on {socket.gethostname()}: {text}\n")
        sys.stderr.flush()
        self.comm.Abort(1)


def _hook(user, work, *args):
    """A hook's work for the C core: DN_OK, or the error kept on the World and DN_ERR_STATE (an exception must
    never unwind through C; the caller raises it)."""
    world = ffi.from_handle(user)
    try:
        getattr(world, work)(*args)
        return lib.DN_OK
    except BaseException as e:
        world.error = e
        return lib.DN_ERR_STATE


@ffi.def_extern()
def _pydarknet_reduce_hook(net_ptr, user, values, count):
    return _hook(user, "_reduce_sums", values, count)


@ffi.def_extern()
def _pydarknet_gradient_hook(net_ptr, user, images):
    return _hook(user, "_reduce_gradients", net_ptr, images)
