"""Server-side batching: requests that arrive together share a model call.

A model call has a fixed cost (a session run, a kernel launch, copies to
the device) that a batch of rows pays once. `MicroBatcher` sits between
the handlers of a server and a blocking `run_batch(key, arrays)` function:
each handler awaits `submit(key, arrays)` with its own rows, the batcher
concatenates the rows of requests that queued while the model was busy,
runs one call in a worker thread and hands each request its own rows of
the outputs.

It imports NumPy and the standard library only, so the model server can
use it without Keras.
"""

import asyncio
import collections
import logging

import numpy as np

_LOG = logging.getLogger(__name__)


class MicroBatcher:
    """Groups concurrent requests into shared calls of a blocking model.

    `await submit(key, arrays)` answers exactly what `run_batch(key,
    arrays)` alone would return, row for row; only the number of model
    calls changes. The rules:

    - Opportunistic by default: a request that finds a free call slot
      (fewer than `max_in_flight` calls running) and nothing queued before
      it is dispatched at once, so one client never waits for company.
      Requests that arrive while every slot is busy queue, and the next
      free slot takes the oldest queued request together with the requests
      queued behind it, in arrival order, up to `max_batch_size` rows. The
      busier the model, the larger the batches.
    - With `batch_timeout_ms > 0` (a dynamic batcher), a request that starts
      a queue waits up to that long for company even when a slot is free;
      the queue is dispatched earlier once it holds `max_batch_size` rows,
      and at once after `close()`.
    - Requests merge only when they have the same `key` and the same input
      names, trailing shapes (all axes after the first) and dtypes. Others
      queue separately; a free slot goes to the queue whose first request
      is oldest.
    - A request of more than `max_batch_size` rows runs alone: requests are
      never split, and never merged above `max_batch_size` rows.
    - Errors are isolated: if a merged call raises (or returns outputs
      without one row per input row), each of its requests is run again
      alone, in the same worker thread, so a request gets an exception only
      when it fails on its own; a bad row of one client never fails the
      requests it was batched with. A request that ran alone gets the
      exception of its call.
    - A cancelled request (a client that went away) leaves the queue, or
      has its rows dropped if its call already runs; the others are
      answered as usual.

    A request's outputs are its own call's arrays when it ran alone, and
    slices (NumPy views) of the batch's output arrays when it was merged:
    the views of different requests never overlap, so writing into one
    never changes another request's rows, but a view keeps the whole
    batch's array alive. Copy them (`np.array(value)`) to keep them long.

    A batcher belongs to the event loop of its first `submit`; call its
    methods from that loop only. `run_batch` runs in `executor` (a
    `concurrent.futures.Executor`; `None` is the loop's default
    thread pool), so it must be thread-safe when `max_in_flight > 1`.
    TensorFlow and ONNX Runtime release the GIL while they compute.

    Args:
        run_batch: callable `(key, arrays) -> dict` that runs the model:
            `arrays` maps input names to NumPy arrays with the same length
            along axis 0, and the result maps output names to arrays (or
            array-likes) with one row per input row. Per-row parameters of
            a request (a per-row threshold) are inputs like any other.
        max_batch_size: positive int. The most rows a merged call holds.
        batch_timeout_ms: non-negative float. How long the first request
            of an idle queue waits for others before it is dispatched.
            Defaults to `0.0` (opportunistic batching: no added latency).
        max_in_flight: positive int. The most calls of `run_batch` that
            run at once. Defaults to `1`.
        executor: a `concurrent.futures.Executor` to run `run_batch` in, or
            `None` for the event loop's default executor.

    Attributes:
        num_requests: the requests submitted.
        num_calls: the calls of `run_batch`, retries of a failed merged
            call's requests included.
        batch_sizes: a `collections.Counter` mapping the rows of a call to
            the number of calls of that size.
        num_isolated_batches: the merged calls that failed and whose
            requests were run again alone.

    Example:

    >>> def run_batch(key, arrays):
    ...     return {"twice": 2 * arrays["x"]}
    >>> async def main():
    ...     batcher = MicroBatcher(run_batch, max_batch_size=8)
    ...     outputs = await asyncio.gather(
    ...         *(batcher.submit("default", {"x": np.full((2, 3), i)})
    ...           for i in range(4))
    ...     )
    ...     await batcher.close()
    ...     return outputs, batcher.num_calls
    >>> outputs, num_calls = asyncio.run(main())
    >>> [output["twice"][:, 0].tolist() for output in outputs]
    [[0, 0], [2, 2], [4, 4], [6, 6]]
    >>> num_calls  # the first request alone, the three others merged
    2
    """

    def __init__(
        self,
        run_batch,
        max_batch_size,
        batch_timeout_ms=0.0,
        max_in_flight=1,
        executor=None,
    ):
        if not callable(run_batch):
            raise TypeError(
                "Expected `run_batch` to be a callable (key, arrays) -> "
                f"dict. Received: {run_batch!r}"
            )
        if not _is_int(max_batch_size) or max_batch_size < 1:
            raise ValueError(
                "Invalid `max_batch_size`: expected a positive int. "
                f"Received: max_batch_size={max_batch_size!r}"
            )
        if (
            isinstance(batch_timeout_ms, bool)
            or not isinstance(batch_timeout_ms, (int, float))
            or not batch_timeout_ms >= 0
            or batch_timeout_ms == float("inf")
        ):
            raise ValueError(
                "Invalid `batch_timeout_ms`: expected a finite number >= 0. "
                f"Received: batch_timeout_ms={batch_timeout_ms!r}"
            )
        if not _is_int(max_in_flight) or max_in_flight < 1:
            raise ValueError(
                "Invalid `max_in_flight`: expected a positive int. "
                f"Received: max_in_flight={max_in_flight!r}"
            )
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_timeout_ms = float(batch_timeout_ms)
        self.max_in_flight = max_in_flight
        self.executor = executor
        self.num_requests = 0
        self.num_calls = 0
        self.batch_sizes = collections.Counter()
        self.num_isolated_batches = 0
        self._loop = None
        # One queue per (key, input layout), in creation order.
        self._queues = {}
        self._num_queued = 0
        self._in_flight = 0
        self._sequence = 0
        self._timer = None
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def closed(self):
        """Whether `close()` was called (new requests are refused)."""
        return self._closed

    @property
    def num_queued(self):
        """The requests waiting for a call slot (a gauge for metrics)."""
        return self._num_queued

    @property
    def num_in_flight(self):
        """The calls of `run_batch` running now (a gauge for metrics)."""
        return self._in_flight

    async def submit(self, key, arrays):
        """Runs `arrays` through `run_batch`, possibly with other requests.

        Args:
            key: a hashable value passed to `run_batch`; only requests with
                equal keys share a call (a signature name, whether a
                threshold parameter was given).
            arrays: dict mapping input names to arrays of the same length
                along axis 0 (the rows of this request).

        Returns:
            A dict with the outputs of `run_batch` for these rows, row for
            row what `run_batch(key, arrays)` alone returns (slices of the
            batch's arrays when the request was merged).

        Raises:
            RuntimeError: the batcher is closed.
            Exception: what `run_batch` raised for this request alone.
        """
        if self._closed:
            raise RuntimeError(
                "The batcher is closed: it takes no new requests after "
                "`close()` (the server is shutting down)"
            )
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "A `MicroBatcher` serves the event loop of its first "
                "`submit`; it was called from another event loop"
            )
        arrays, rows, layout = _check_request(key, arrays)
        request = _Request(
            arrays=arrays,
            rows=rows,
            future=loop.create_future(),
            sequence=self._sequence,
            deadline=loop.time() + self.batch_timeout_ms / 1000,
        )
        self._sequence += 1
        self.num_requests += 1
        queue_id = (key, layout)
        queue = self._queues.get(queue_id)
        if queue is None:
            queue = self._queues[queue_id] = _Queue(queue_id, key)
        queue.requests.append(request)
        queue.rows += rows
        request.queue = queue
        self._num_queued += 1
        self._idle.clear()
        request.future.add_done_callback(lambda future: self._forget(request))
        self._schedule()
        # Cancelling this coroutine cancels `request.future`, which takes
        # the request out of its queue (`_forget`).
        return await request.future

    async def close(self):
        """Stops taking requests and waits until every one is answered.

        Requests queued or in a running call when `close` is called are
        still run and answered (a queue waiting for its batch timeout is
        dispatched at once); `submit` raises `RuntimeError` afterwards.
        Calling `close` again waits the same way.
        """
        self._closed = True
        self._schedule()
        await self._idle.wait()

    def _schedule(self):
        """Starts calls while a slot is free and a queue is ready."""
        if self._loop is None:
            return
        now = self._loop.time()
        while self._in_flight < self.max_in_flight:
            queue = self._oldest_ready(now)
            if queue is None:
                break
            requests = self._take(queue)
            if not queue.requests:
                del self._queues[queue.queue_id]
            self._dispatch(queue.key, requests)
        self._arm_timer(now)
        self._update_idle()

    def _oldest_ready(self, now):
        best = None
        for queue in self._queues.values():
            if not queue.requests:
                continue
            head = queue.requests[0]
            ready = (
                self._closed
                or now >= head.deadline
                or queue.rows >= self.max_batch_size
            )
            if ready and (
                best is None or head.sequence < best.requests[0].sequence
            ):
                best = queue
        return best

    def _take(self, queue):
        """Pops the requests of the next call from `queue`, in order."""
        taken = []
        rows = 0
        while queue.requests:
            request = queue.requests[0]
            if taken and rows + request.rows > self.max_batch_size:
                break
            queue.requests.popleft()
            queue.rows -= request.rows
            self._num_queued -= 1
            request.queue = None
            if request.future.done():
                # Cancelled; its callback has not run yet.
                continue
            taken.append(request)
            rows += request.rows
            if rows >= self.max_batch_size:
                break
        return taken

    def _dispatch(self, key, requests):
        if not requests:
            return
        self._in_flight += 1
        try:
            call = self._loop.run_in_executor(
                self.executor, self._execute, key, requests
            )
        except Exception as error:  # A shut-down executor.
            self._in_flight -= 1
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        call.add_done_callback(lambda call: self._finish(requests, call))

    def _execute(self, key, requests):
        """Runs one call (and its retries) in a worker thread.

        Returns the outcome of every request, `(outputs, None)` or
        `(None, exception)`, and the rows of every call made.
        """
        if len(requests) == 1:
            request = requests[0]
            outcome = _run_one(self.run_batch, key, request)
            return [outcome], [request.rows], False
        rows = sum(request.rows for request in requests)
        names = list(requests[0].arrays)
        try:
            merged = {
                name: np.concatenate(
                    [request.arrays[name] for request in requests]
                )
                for name in names
            }
            outputs = _check_outputs(self.run_batch(key, merged), rows)
        except Exception as error:
            _LOG.info(
                "A merged call of %d requests (%d rows) raised %r; running "
                "each request alone.",
                len(requests),
                rows,
                error,
            )
            outcomes = [
                _run_one(self.run_batch, key, request) for request in requests
            ]
            sizes = [rows] + [request.rows for request in requests]
            return outcomes, sizes, True
        outcomes = []
        start = 0
        for request in requests:
            stop = start + request.rows
            outcomes.append(
                ({name: value[start:stop] for name, value in outputs}, None)
            )
            start = stop
        return outcomes, [rows], False

    def _finish(self, requests, call):
        self._in_flight -= 1
        if call.cancelled():
            error = asyncio.CancelledError()
            outcomes = [(None, error)] * len(requests)
        elif call.exception() is not None:
            outcomes = [(None, call.exception())] * len(requests)
        else:
            outcomes, sizes, isolated = call.result()
            self.num_calls += len(sizes)
            self.batch_sizes.update(sizes)
            self.num_isolated_batches += isolated
        for request, (outputs, error) in zip(requests, outcomes):
            if request.future.done():
                continue
            if error is None:
                request.future.set_result(outputs)
            else:
                request.future.set_exception(error)
        self._schedule()

    def _forget(self, request):
        """Takes a cancelled request out of its queue."""
        queue = request.queue
        if queue is None:
            return
        queue.requests.remove(request)
        queue.rows -= request.rows
        self._num_queued -= 1
        request.queue = None
        if not queue.requests:
            del self._queues[queue.queue_id]
        # The next request's deadline may have passed already.
        self._schedule()

    def _arm_timer(self, now):
        """Wakes `_schedule` when the earliest waiting queue times out."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight >= self.max_in_flight or self._closed:
            return
        deadlines = [
            queue.requests[0].deadline
            for queue in self._queues.values()
            if queue.requests
        ]
        if deadlines:
            # `call_at` may fire a clock tick early: `_schedule` then
            # re-arms the timer.
            self._timer = self._loop.call_at(
                max(min(deadlines), now), self._schedule
            )

    def _update_idle(self):
        if self._num_queued == 0 and self._in_flight == 0:
            self._idle.set()
        else:
            self._idle.clear()


class _Request:
    __slots__ = ("arrays", "rows", "future", "sequence", "deadline", "queue")

    def __init__(self, arrays, rows, future, sequence, deadline):
        self.arrays = arrays
        self.rows = rows
        self.future = future
        self.sequence = sequence
        self.deadline = deadline
        self.queue = None


class _Queue:
    __slots__ = ("queue_id", "key", "requests", "rows")

    def __init__(self, queue_id, key):
        self.queue_id = queue_id
        self.key = key
        self.requests = collections.deque()
        self.rows = 0


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_request(key, arrays):
    """Returns the request's arrays, its rows and its merge layout."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            "Invalid `key`: expected a hashable value (a string or a tuple). "
            f"Received: {key!r}"
        ) from None
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError(
            "Invalid `arrays`: expected a non-empty dict mapping input names "
            f"to arrays. Received: {type(arrays).__name__} {arrays!r:.80}"
        )
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    shapes = {name: value.shape for name, value in arrays.items()}
    if any(len(shape) == 0 for shape in shapes.values()) or (
        len({shape[0] for shape in shapes.values()}) > 1
    ):
        raise ValueError(
            "Invalid `arrays`: expected arrays of rank >= 1 with the same "
            f"length along axis 0. Received shapes: {shapes}"
        )
    rows = next(iter(shapes.values()))[0]
    layout = tuple(
        sorted(
            (name, value.shape[1:], value.dtype.str)
            for name, value in arrays.items()
        )
    )
    return arrays, rows, layout


def _check_outputs(outputs, rows):
    """The outputs of a call as (name, array) pairs, one row per input row."""
    if not isinstance(outputs, dict):
        raise TypeError(
            "`run_batch` must return a dict of arrays. Received: "
            f"{type(outputs).__name__}"
        )
    checked = []
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim == 0 or len(value) != rows:
            raise ValueError(
                f"`run_batch` returned output {name!r} of shape "
                f"{value.shape} for a batch of {rows} rows; expected one row "
                "per input row"
            )
        checked.append((name, value))
    return checked


def _run_one(run_batch, key, request):
    try:
        # A copy: `run_batch` may edit its dict (pop a parameter).
        outputs = _check_outputs(
            run_batch(key, dict(request.arrays)), request.rows
        )
    except StopIteration as error:
        # A future cannot hold a StopIteration.
        return None, RuntimeError(f"`run_batch` raised {error!r}")
    except Exception as error:
        return None, error
    return dict(outputs), None
