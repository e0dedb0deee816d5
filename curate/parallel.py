"""Both cores for curate's per-row work: an ordered map over forked worker processes, a bounded number of
chunks in flight (so a streamed input is never read ahead whole).

Forked, not spawned: the workers inherit the loaded tokenizer and config instead of importing transformers
again (seconds each). The results come back in input order whatever the number of workers, so the outputs
are the same byte for byte with one worker or many (tests/test_curate_scale.py). A worker that dies (the
kernel's OOM killer) fails the run with a one-line error naming curate.workers instead of hanging it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from common.config import cpu_cores
from common.errors import UserError

T = TypeVar("T")
R = TypeVar("R")


# About where the main process (reading, unpickling ~20 us per row, measured) would become the bottleneck of
# workers doing ~2k rows/s each; an estimate, not measured past the 2 cores here.
AUTO_MAX_WORKERS = 16


def workers(setting: int) -> int:
    """curate.workers: 0 = one per core, at most AUTO_MAX_WORKERS; otherwise as set."""
    return setting if setting > 0 else min(cpu_cores(), AUTO_MAX_WORKERS)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], n_workers: int) -> Iterator[R]:
    """fn over items, results in input order. One worker: in this process, nothing forked. Several: at most
    two items per worker submitted and not yet returned. `fn` must be a module-level function; what it reads
    from module globals is what they held at fork time."""
    if n_workers <= 1:
        yield from map(fn, items)
        return
    # Workers tokenize one text at a time each: the tokenizers library's own thread pool in every worker
    # would only fight them for the same cores (and it warns when forked after use unless this is set).
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"))
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) == 1:  # the executor forks its workers on demand: all of them exist by now
                _restore("TOKENIZERS_PARALLELISM", previous)
            if len(pending) >= 2 * n_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        raise UserError(f"a curate worker process died without an error of its own (most often the system's out-of-memory "
                        f"killer: see `dmesg`); free memory, or run on fewer processes, e.g. curate.workers=1 "
                        f"(now {n_workers})") from None
    finally:
        _restore("TOKENIZERS_PARALLELISM", previous)
        pool.shutdown(wait=True, cancel_futures=True)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
