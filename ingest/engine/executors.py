"""Where `process_checkpoint` runs: the `Executor` protocol and `Serial`, the default one.

`Serial` processes the checkpoints one after the other in this process, the next one made ready
meanwhile (on a GPU read into host memory by a thread, on a CPU its hub download started).
`ingest/engine/cluster.py`'s `RayExecutor` is the other one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from geowh.ingest.engine.plan import CheckpointResult, Plan, load_options, resolved_here
from geowh.ingest.sources.series import CheckpointRef

if TYPE_CHECKING:
    from geowh.ingest.engine.run import Job, Work


class Executor(Protocol):
    """Where `process_checkpoint` runs. The driver alone writes: it calls nothing here that writes.

    `prepare(plan)` readies the workers and returns the plan as they will run it: its device
    checked and dtype resolved there (`resolved_here` in a worker), and possibly its probe
    tokenized. `map(work, jobs, started)` calls `started(job)` in the driver's process just
    before handing `job` out (the driver writes its `running` row there), runs `work(job)`
    (which returns the job's `CheckpointResult`) and yields the results, in any order, as they
    are done. A job whose `work` raises stops the run: the exception is raised from the iterator.
    A job whose process died yields `work.lost(job, why)`.
    """

    def prepare(self, plan: Plan) -> Plan: ...

    def map(self, work: Work, jobs: Sequence[Job], started: Callable[[Job], None]) -> Iterator[CheckpointResult]: ...


class Serial:
    """The default executor: one checkpoint after the other, in this process, the next one made
    ready meanwhile.

    With `preload`, a thread reads the next checkpoint's weights into host memory while this one
    computes, so that only the move to the device is left when its turn comes; without, the next
    hub checkpoint downloads meanwhile. `None` (auto) preloads when the plan's device is a GPU:
    on the CPU, reading the weights is the whole load, and a second model would only cost memory.
    """

    def __init__(self, preload: bool | None = None):
        self.preload = preload

    def prepare(self, plan: Plan) -> Plan:
        return resolved_here(plan)

    def preloading(self, plan: Plan) -> bool:
        if self.preload is not None:
            return self.preload
        from geowh.ingest.sources.models import resolve_device

        return resolve_device(plan.config.device).type == "cuda"

    def map(
        self, work: Work, jobs: Sequence[Job], started: Callable[[Job], None]
    ) -> Iterator[CheckpointResult]:
        refs = [job.ref for job in jobs]
        with _Preloader(refs, work.plan) if self.preloading(work.plan) else _Prefetcher(refs) as ahead:
            for i, job in enumerate(jobs):
                started(job)
                yield work(job, ahead.load(i))


class _Prefetcher:
    """Downloads the next hub checkpoint in the background while this one computes."""

    def __init__(self, refs: Sequence[CheckpointRef]):
        self.refs = refs
        self.pool = None

    def __enter__(self):
        from huggingface_hub import constants

        if any(r.repo for r in self.refs) and not constants.HF_HUB_OFFLINE:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geowh-prefetch")
        return self

    def load(self, i: int) -> None:
        """Start the download of checkpoint i + 1; checkpoint i loads as it would without."""
        if self.pool is None or i + 1 >= len(self.refs) or self.refs[i + 1].repo is None:
            return
        ref = self.refs[i + 1]
        # A failed prefetch is not reported here: loading the checkpoint retries and reports it.
        self.pool.submit(_download, ref)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _download(ref: CheckpointRef) -> None:
    from huggingface_hub import (
        snapshot_download,  # imported by _import_now in the main thread
    )

    assert ref.repo is not None  # only hub refs are prefetched
    snapshot_download(ref.repo, revision=ref.revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])


class _Preloader:
    """Reads the next checkpoint into host memory while this one computes (`Serial(preload=True)`).

    Checkpoint i + 1 starts loading only once checkpoint i is on the device: at most one model
    waits in host memory, and the thread is never the first to import a model's code (a load in
    the main thread did). Its thread is a daemon: an interrupted run exits without waiting for
    it, and the model it was reading is released when it is done.
    """

    def __init__(self, refs: Sequence[CheckpointRef], plan: Plan):
        self.refs, self.plan = refs, plan
        self.ahead: Future | None = None  # checkpoint i + 1 on its way to host memory

    def __enter__(self):
        return self

    def load(self, i: int) -> Callable[[], Any]:
        """How `process_checkpoint` gets checkpoint i: from the thread, or read here when none
        read it (the first, or the one after a failure)."""

        def load():
            from geowh.ingest.sources.models import load_checkpoint, to_device

            options = dict(device="cpu", **load_options(self.plan))
            ahead, self.ahead = self.ahead, None
            try:
                host = ahead.result() if ahead else load_checkpoint(self.refs[i], **options)
            except BaseException:
                if ahead:  # a Ctrl-C while waiting: the thread's model is freed when it is done
                    ahead.add_done_callback(_release)
                raise
            loaded = to_device(host, self.plan.config.device)
            if i + 1 < len(self.refs):
                self.ahead = _in_thread(load_checkpoint, self.refs[i + 1], **options)
            return loaded

        return load

    def __exit__(self, *exc):
        if self.ahead is not None:  # the run stopped before its turn
            self.ahead.add_done_callback(_release)
            self.ahead = None


def _in_thread(fn: Callable, *args, **kwargs) -> Future:
    """`fn(*args, **kwargs)` in a daemon thread: its result, or its exception, in the future."""
    future: Future = Future()

    def call():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # a CheckpointError or a bug alike: raised where the result is taken
            future.set_exception(e)

    threading.Thread(target=call, name="geowh-preload", daemon=True).start()
    return future


def _release(future: Future) -> None:
    if future.exception() is None:
        future.result().release()
