"""Ray: the checkpoints of one run spread over a cluster's GPUs (or CPUs).

`RayExecutor` is an `Executor` of the run engine (`ingest.engine.run`), nothing beside it: the driver
plans, skips what is done, writes every `running` row and every result, one transaction per
checkpoint as results arrive. Workers run `process_checkpoint` and return rows; they never open
the warehouse, so workers on other nodes need no shared disk (only geowh installed, and the
checkpoints reachable: the hub, or a path every node sees).

- The plan (series, config, measurements) is prepared once on a worker, where the device and
  dtype are resolved and each measurement made ready (the geometry's probe tokenized), and
  shipped to every task through Ray's object store.
- Each checkpoint is one Ray task with `gpus_per_worker` GPUs (fractional shares several small
  checkpoints per GPU) or, on CPUs, an equal share of the cluster's CPUs; at most `workers` run
  at once.
- A worker that dies (killed, out of host memory, its node lost) costs only its checkpoint: Ray
  runs the task once more, and a second death yields a failed row; the others go on.
- Each `runs` row names the worker that computed it (host, pid, device), since the row is built
  there.

    with RayExecutor("auto", workers=8) as executor:
        ingest("pythia-410m", config, selection, executor=executor)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from geowh.errors import CheckpointError, GeowhError, InputError
from geowh.ingest.engine.plan import CheckpointResult, Plan
from geowh.ingest.engine.run import Job, Work
from geowh.progress import silent

CONNECT_TIMEOUT = 10.0  # seconds for the head node to answer
INSTALL = "pip install 'geowh[ray]' (on every node of the cluster)"


@dataclass
class RayExecutor:
    """Runs the checkpoints of an ingest as Ray tasks; use it as a context manager.

    `address`: `local` (a private Ray instance on this machine, ended with the run), `auto` (the
    cluster started on this machine with `ray start`), `HOST:PORT` or `ray://HOST:PORT` (Ray
    Client); None reads RAY_ADDRESS, else means `local`. Inside a Ray session already started
    (a notebook, a Ray job), that session is used and left running.
    `workers`: checkpoints at once (default: the cluster's GPUs / `gpus_per_worker`, or one per
    four CPUs). `gpus_per_worker`: GPUs per checkpoint (default 1 on a cluster with GPUs, else 0).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers {self.workers}: give at least 1")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker {self.gpus_per_worker}: give 0 (CPU workers) or more")
        self._started = False
        self._resources: dict = {}

    def __enter__(self) -> RayExecutor:
        ray = _ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or "local"
            _check_reachable(address)
            # Ray's core installs its own SIGTERM handler, which aborts the process: ours must stay,
            # so that Ctrl-C and SIGTERM record the run `interrupted` and end Ray cleanly.
            handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            # A private instance uses a token of its own; saying so on every run is noise.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            try:
                # Workers' output stays in Ray's logs: a terminal shows geowh's progress, and a
                # checkpoint's error comes back with its result.
                with _quiet_stderr(address != "local"):
                    ray.init(address=address, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise InputError(
                    f"--ray {address}: cannot connect ({str(e).splitlines()[0][:200]}); start a cluster with "
                    "`ray start --head` (then --ray auto), give its HOST:PORT, or use --ray local"
                ) from None
            finally:
                if threading.current_thread() is threading.main_thread():
                    for s, handler in handlers.items():
                        signal.signal(s, handler)
            self._started = True
        self._resources = self._fit(ray.cluster_resources())
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            _ray().shutdown()
            self._started = False

    def _fit(self, cluster: dict) -> dict:
        """Task resources and the number at once, from the cluster's GPUs and CPUs."""
        gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
        per = self.gpus_per_worker if self.gpus_per_worker is not None else (1 if gpus else 0)
        if per > gpus:
            raise InputError(
                f"--gpus-per-worker {per:g}: the Ray cluster has {gpus:g} GPU(s); "
                "use --gpus-per-worker 0 for CPU workers or connect to a cluster with GPUs"
            )
        if per:
            workers = self.workers or max(1, int(gpus // per))
            return {"num_gpus": per, "num_cpus": 1, "workers": workers}
        workers = self.workers or max(1, int(cpus // 4))
        # torch in each task uses as many threads as CPUs it was given (Ray sets OMP_NUM_THREADS)
        return {"num_gpus": 0, "num_cpus": max(1, int(cpus // workers)), "workers": workers}

    @property
    def workers_at_once(self) -> int:
        return self._resources["workers"]

    def _options(self) -> dict:
        if not self._resources:
            raise RuntimeError("use RayExecutor as a context manager: with RayExecutor(...) as executor")
        return {"num_gpus": self._resources["num_gpus"], "num_cpus": self._resources["num_cpus"]}

    def prepare(self, plan: Plan) -> Plan:
        """The plan as the workers run it: resolved and tokenized once, on a worker."""
        ray = _ray()
        return _get(ray, ray.remote(_prepare).options(**self._options()).remote(plan))

    def map(self, work: Work, jobs: Sequence[Job], started: Callable[[Job], None]) -> Iterator[CheckpointResult]:
        ray = _ray()
        # Progress is drawn in the driver's terminal; the plan goes to the object store once.
        shipped = ray.put(replace(work, progress=silent))
        task = ray.remote(_process).options(**self._options(), max_retries=1)
        waiting = list(jobs)
        running: dict = {}  # ObjectRef → Job
        # When the run stops (an error, Ctrl-C), the tasks still out are not cancelled here: Ray
        # ends a driver's tasks when it disconnects, and cancelling one that is finishing aborts
        # this process inside Ray (2.60: "Tried to complete task that was not pending"), before
        # the run is recorded as interrupted.
        while waiting or running:
            while waiting and len(running) < self.workers_at_once:
                job = waiting.pop(0)
                started(job)
                running[task.remote(shipped, job)] = job
            ready, _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ready[0])
            try:
                yield _get(ray, ready[0])
            except _Lost as e:
                yield work.lost(job, f"the Ray worker computing it died twice: {e}")


class _Lost(Exception):
    """A task's process or node died (Ray's retry included)."""


def _get(ray, ref):
    """ray.get, with the task's own exception raised as itself (a geowh error keeps its message)."""
    from ray import exceptions

    try:
        return ray.get(ref)
    except exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, BaseException) else None
        if isinstance(cause, GeowhError):
            raise cause from None
        raise
    except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.ObjectLostError,
            exceptions.OutOfMemoryError) as e:
        raise _Lost(str(e).splitlines()[0]) from None


@contextmanager
def _quiet_stderr(quiet: bool = True) -> Iterator[None]:
    """Nothing written to the process's stderr (fd 2) in the block: Ray's C++ core logs each retry
    of an address that does not answer as Ray there (20 lines) before the error geowh reports in one."""
    if not quiet:
        yield
        return
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _check_reachable(address: str) -> None:
    """Refuse an address where nothing listens: Ray itself retries a dead one for many minutes."""
    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT) as conn:
            # Ray's head (and its client server) speaks gRPC: HTTP/2, whose server answers a client's
            # preface with a SETTINGS frame. A port that accepts and stays silent (another program)
            # would keep ray.init waiting for many minutes.
            conn.sendall(HTTP2_PREFACE)
            frame = conn.recv(9)
    except ValueError:
        raise InputError(f"--ray {address}: give local, auto, HOST:PORT or ray://HOST:PORT") from None
    except OSError as e:
        why = "it accepts connections but does not answer" if isinstance(e, TimeoutError) else e.strerror or e
        raise InputError(
            f"--ray {address}: nothing answers there as Ray ({why}); start the cluster's head with "
            "`ray start --head` and give the address it prints, or use --ray local"
        ) from None
    if len(frame) < 4 or frame[3] != 0x4:  # the frame type of SETTINGS
        raise InputError(
            f"--ray {address}: what answers there is not Ray (no HTTP/2 from it); give the address "
            "`ray start --head` prints, or use --ray local"
        )


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""The client connection preface of HTTP/2 and an empty SETTINGS frame."""


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray: {INSTALL}") from None
    return ray


def _prepare(plan: Plan) -> Plan:
    """On a worker: the device and dtype resolved there, and each measurement made ready once
    (the geometry's probe tokenized), for every task to read instead of redoing it."""
    from geowh.ingest.engine.plan import resolved_here
    from geowh.ingest.sources.models import load_tokenizer

    plan = resolved_here(plan)
    if plan.series.checkpoints:
        try:
            tokenizer = load_tokenizer(plan.series.checkpoints[0], plan.config.tokenizer or plan.series.tokenizer)
        except CheckpointError:
            return plan  # each task then tokenizes itself, and a checkpoint without a tokenizer fails there
        for m in plan.measurements:
            m.ready(tokenizer)
    return plan


def _process(work: Work, job: Job) -> CheckpointResult:
    return work(job)
