"""Data-parallel training over MPI: several processes (on one machine or
many) train one model.

``mpiexec -n N pydarknet detector train ...`` runs N ranks of the same
command. ``[net] batch`` stays the global batch: rank r trains on rows
r*batch/N .. (r+1)*batch/N - 1 of every iteration's global batch (the very
images, augmentations and sizes one process would draw), in its own
``subdivisions`` mini-batches. The C core keeps every parameter gradient in
one block of floats (``dn_net_gradient_block``), and this module sums it over
the ranks in place, in buckets: during the last mini-batch's backward pass the
core hands over each range of the block whose gradients have become final
(the bucket hook, every ``PYDARKNET_MPI_BUCKET_MB`` megabytes, the later
layers first), a non-blocking all-reduce of that range starts on a thread of
this module while the earlier layers' backward passes run, and between the
backward pass and the update the gradient hook waits for them all and sums
the image count the update divides by; every rank then makes the same update.
So N ranks with ``subdivisions=S`` train the parameters one process with
``subdivisions=N*S`` trains, up to the order of float sums. Batch-norm
rolling statistics, which each rank moves with its own mini-batches, are
averaged over the ranks at every update, so every rank holds the same network
and rank 0's checkpoints are the run's. With ``sync_bn=1`` ([net], or per
[convolutional] layer) batch norm takes its statistics over every rank's
mini-batch (the C layer hands its per-channel sums over through the reduce
hook: two all-reduces forward, one backward), so N ranks of mini-batch m
train what one process of mini-batch N*m trains.

Every collective call of the training loop is made, in the order the ranks
post it (the same on every rank), by one thread (``_Courier``), which keeps
each non-blocking all-reduce moving (MPI implementations progress a
non-blocking collective only inside MPI calls) and ends it with an error after
``PYDARKNET_MPI_TIMEOUT`` seconds without an answer. An MPI library without
thread support (below MPI_THREAD_SERIALIZED) gets the same calls from the
main thread: the all-reduces start during the backward pass and finish at the
gradient hook. A network on a GPU hands the whole block over after its
backward pass (its gradients come to the host then).

Without MPI (or with one rank) nothing here is used, and mpi4py is never
imported. ``pip install 'pydarknet[mpi]'`` installs mpi4py and an MPI.
"""
import os
import queue
import socket
import sys
import threading
import time

import numpy as np

from ._native import check, ffi, lib
from .train_checks import TrainError

# the launchers' environment: Open MPI, then MPICH / Intel MPI (Hydra) and PMIx
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
# seconds an all-reduce may wait for the other ranks before the job is ended (a rank stopped or hung); long
# enough for rank 0's -map evaluation, which the others wait through
TIMEOUT_VARIABLE, DEFAULT_TIMEOUT = "PYDARKNET_MPI_TIMEOUT", 3600.0
# megabytes of gradients per all-reduce started during the backward pass (0: one all-reduce after it)
BUCKET_VARIABLE, DEFAULT_BUCKET_MB = "PYDARKNET_MPI_BUCKET_MB", 4.0


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
        local = comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        self.error = None          # an exception raised inside the gradient hook
        self._buffer = None
        self._net = None
        self._rolling = None   # (network, its rolling statistics' (layer, parameter) indices)
        self._handle = ffi.new_handle(self)
        self.timeout = _number(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT, "a number of seconds")
        self.bucket_mb = _number(BUCKET_VARIABLE, DEFAULT_BUCKET_MB, "a number of megabytes, 0 or more")
        self.iteration = 0     # updates made
        self._block = None     # the attached network's gradient block (a view of the C floats)
        self._pending = []     # this update's all-reduces of gradient ranges, in the order they started
        self._courier = None   # while a network is attached (and the MPI library allows threads)

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
        # one thread makes the training loop's collective calls where the MPI library allows it
        if self._courier is None and self._mpi.Query_thread() >= self._mpi.THREAD_SERIALIZED:
            self._courier = _Courier(self)
        bucket = int(self.bucket_mb * 1e6 / 4)
        check(lib.dn_net_set_bucket_hook(net._ptr, lib._pydarknet_bucket_hook, self._handle, bucket))
        check(lib.dn_net_set_gradient_hook(net._ptr, lib._pydarknet_gradient_hook, self._handle))
        # synchronized batch norm (sync_bn=1 in the cfg): the per-channel sums of every rank's mini-batch
        check(lib.dn_net_set_reduce_hook(net._ptr, lib._pydarknet_reduce_hook, self._handle))

    def detach(self, net):
        check(lib.dn_net_set_bucket_hook(net._ptr, ffi.NULL, ffi.NULL, 0))
        check(lib.dn_net_set_gradient_hook(net._ptr, ffi.NULL, ffi.NULL))
        check(lib.dn_net_set_reduce_hook(net._ptr, ffi.NULL, ffi.NULL))
        self._net = self._rolling = self._block = None
        self._pending = []
        if self._courier is not None:
            self._courier.stop()
            self._courier = None

    def _reduce_sums(self, values, count):
        """sync_bn's per-channel sums (doubles, in the C layer's buffer) summed over the ranks in place."""
        self._allreduce(np.frombuffer(ffi.buffer(values, count * 8), np.float64))

    def _start_bucket(self, net_ptr, offset, count):
        """A range of the gradient block is final for this update: its all-reduce starts (in place)."""
        if not self._pending:   # the block (allocated when training was enabled), viewed once per update
            block, total = ffi.new("float **"), ffi.new("size_t *")
            check(lib.dn_net_gradient_block(net_ptr, block, total))
            self._block = np.frombuffer(ffi.buffer(block[0], total[0] * 4), np.float32)
        self._pending.append(self._start(self._block[offset:offset + count]))

    def _reduce_gradients(self, net_ptr, images):
        """Between the backward pass and the update: the image count and the rolling statistics posted behind the
        gradient ranges, then every all-reduce of the update waited for."""
        pending, self._pending = self._pending, []
        count = np.array([images[0]], np.uint64)
        pending.append(self._start(count))
        finish = self._average_rolling_statistics(self._net, pending)
        for job in pending:
            job.wait()
        images[0] = int(count[0])
        finish()
        self.iteration += 1

    def _start(self, array):
        """Starts summing `array` over the ranks in place; the returned job's wait() ends it."""
        if self._courier is not None:
            return self._courier.post(array)
        return _Started(self, self.comm.Iallreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM))

    def _allreduce(self, array):
        """Sums `array` over the ranks in place, waiting at most `timeout` seconds
        (every collective of the training loop goes through here or _start)."""
        self._start(array).wait()

    def _wait(self, request):
        """Waits for a non-blocking collective, at most `timeout` seconds."""
        deadline = time.monotonic() + self.timeout
        pause = 0.00005
        while not request.Test():
            if time.monotonic() > deadline:
                raise TrainError(f"an all-reduce of update {self.iteration + 1} got no answer within "
                                 f"{self.timeout:g} s: another rank stopped or hangs ({TIMEOUT_VARIABLE} sets the "
                                 f"limit)")
            time.sleep(pause)
            pause = min(pause * 2, 0.001)

    def sum(self, value):
        total = np.array([value], np.float64)
        self._allreduce(total)
        return float(total[0])

    def average_rolling_statistics(self, net):
        """Batch norm's rolling mean and variance averaged over the ranks, in one
        all-reduce (every rank calls it)."""
        pending = []
        finish = self._average_rolling_statistics(net, pending)
        for job in pending:
            job.wait()
        finish()

    def _average_rolling_statistics(self, net, pending):
        """Starts the all-reduce of the rolling statistics (appended to `pending`); the returned function writes
        the averages back once it is done."""
        if self._rolling is None or self._rolling[0] is not net:
            self._rolling = (net, [(layer.index, j) for layer in net.layers
                                   for j, k in enumerate(layer.params) if k.startswith("rolling_")])
        # each handed out (on a device: brought to the host, and back before the next pass; the gradients cross
        # apart, as one block); views of the C tensors
        views = []
        for i, j in self._rolling[1]:
            data, count = ffi.new("float **"), ffi.new("size_t *")
            check(lib.dn_layer_param(net._ptr, i, j, ffi.NULL, data, count))
            views.append(np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32))
        if not views:
            return lambda: None
        values = np.concatenate(views)
        pending.append(self._start(values))

        def finish():
            values[:] /= self.size
            at = 0
            for v in views:
                v[:] = values[at:at + v.size]
                at += v.size

        return finish

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


def _number(variable, default, what):
    text = os.environ.get(variable)
    try:
        value = default if text is None else float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise TrainError(f"{variable}={text!r} is not {what}")
    return value


class _Started:
    """A non-blocking all-reduce started on the calling thread (an MPI library without thread support)."""

    def __init__(self, world, request):
        self._world, self._request = world, request

    def wait(self):
        self._world._wait(self._request)


class _Job:
    """An all-reduce posted to the courier: wait() returns when it is done, or raises its error."""

    def __init__(self, array):
        self.array, self.error, self.done = array, None, threading.Event()

    def wait(self):
        self.done.wait()
        if self.error is not None:
            raise self.error


class _Courier:
    """The thread that makes the training loop's collective calls, one at a time in the order they were posted
    (every rank posts the same sequence): it starts each all-reduce and polls it to the end, so an all-reduce
    posted during the backward pass moves while the main thread computes."""

    def __init__(self, world):
        self._world = world
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pydarknet-allreduce", daemon=True)
        self._thread.start()

    def post(self, array):
        job = _Job(array)
        self._jobs.put(job)
        return job

    def stop(self):
        self._jobs.put(None)
        self._thread.join()

    def _run(self):
        world, mpi = self._world, self._world._mpi
        failed = None
        while (job := self._jobs.get()) is not None:
            try:
                if failed is not None:   # a collective that failed leaves the ranks out of step: no more
                    raise failed
                world._wait(world.comm.Iallreduce(mpi.IN_PLACE, job.array, op=mpi.SUM))
            except BaseException as e:
                job.error = failed = e
            finally:
                job.done.set()


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
def _pydarknet_bucket_hook(net_ptr, user, offset, count):
    return _hook(user, "_start_bucket", net_ptr, offset, count)


@ffi.def_extern()
def _pydarknet_gradient_hook(net_ptr, user, images):
    return _hook(user, "_reduce_gradients", net_ptr, images)
