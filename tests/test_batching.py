"""`keras_tac.src.batching.MicroBatcher` on NumPy models: batched answers
equal unbatched ones row for row, and requests are grouped, kept apart,
failed, cancelled and drained as documented. No Keras, no wall-clock
assertions: a gate (a `threading.Event` the model waits on) holds a call
running while a test queues requests behind it."""

import asyncio
import concurrent.futures
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from keras_tac.src import batching
from keras_tac.src.batching import MicroBatcher

# Integer-valued floats: sums are exact in any order, so a merged matmul
# equals the per-request one bit for bit whatever kernel BLAS picks.
WEIGHTS = np.random.default_rng(0).integers(-4, 5, (4, 3)).astype("float32")
BAD_VALUE = 999.0
# The longest a test waits for an event before it fails (a hang guard, not
# a timing assertion).
PATIENCE_S = 30


class Model:
    """A per-row NumPy model that records its calls.

    `x @ WEIGHTS` scaled by a per-key factor, its argmax, and an accept
    rule against a per-row `threshold` when one is given. Clear `gate` to
    hold calls running; `started` is set when a call starts.
    """

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.active = 0
        self.most_active = 0

    def __call__(self, key, arrays):
        with self.lock:
            self.calls.append(
                (
                    key,
                    len(arrays["x"]),
                    {
                        name: (a.shape[1:], a.dtype.str)
                        for name, a in arrays.items()
                    },
                )
            )
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.started.set()
        try:
            assert self.gate.wait(PATIENCE_S)
            return reference(key, arrays)
        finally:
            with self.lock:
                self.active -= 1

    @property
    def sizes(self):
        return [rows for _, rows, _ in self.calls]


def reference(key, arrays):
    x = arrays["x"]
    if (x == BAD_VALUE).any():
        raise ValueError("a bad row")
    name = key[0] if isinstance(key, tuple) else key
    factor = {"a": 1, "b": -1}[name]
    logits = factor * x.reshape(len(x), -1)[:, :4] @ WEIGHTS
    outputs = {"logits": logits, "label": logits.argmax(axis=1)}
    if "threshold" in arrays:
        outputs["accepted"] = logits.max(axis=1) >= arrays["threshold"]
    return outputs


def request(rows, seed, width=4, dtype="float32", threshold=False):
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.integers(-8, 9, (rows, width)).astype(dtype)}
    if threshold:
        arrays["threshold"] = rng.integers(-3, 4, rows).astype("float32")
    return arrays


def assert_outputs_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name])
        assert actual[name].dtype == np.asarray(expected[name]).dtype


async def until(condition):
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


async def hold_first_call(batcher, model, key="a", arrays=None):
    """Submits a request whose call blocks on `model.gate` until released."""
    model.gate.clear()
    model.started.clear()
    task = asyncio.ensure_future(
        batcher.submit(key, request(1, 0) if arrays is None else arrays)
    )
    await until(model.started.is_set)
    return task


def queue(batcher, items):
    """Tasks submitting `(key, arrays)` items, in order."""
    return [asyncio.ensure_future(batcher.submit(*item)) for item in items]


class TestMicroBatcher:
    def test_concurrent_requests_equal_unbatched_calls(self):
        model = Model()
        # Keys as the server makes them: (signature, threshold given).
        items = [
            ((key, threshold), request(rows, seed, threshold=threshold))
            for seed, (rows, key, threshold) in enumerate(
                zip(
                    np.random.default_rng(1).integers(1, 6, 50),
                    ["a", "b"] * 25,
                    [False] * 20 + [True] * 30,
                )
            )
        ]

        async def main():
            batcher = MicroBatcher(model, max_batch_size=16)
            outputs = await asyncio.gather(
                *(batcher.submit(*item) for item in items)
            )
            await batcher.close()
            return batcher, outputs

        batcher, outputs = asyncio.run(main())
        for (key, arrays), output in zip(items, outputs):
            assert_outputs_equal(output, reference(key, arrays))
        assert batcher.num_requests == 50
        assert batcher.num_calls == len(model.calls) < 50
        assert max(model.sizes) <= 16
        assert sum(model.sizes) == sum(len(a["x"]) for _, a in items)
        assert sum(batcher.batch_sizes.values()) == batcher.num_calls
        assert batcher.num_queued == batcher.num_in_flight == 0

    def test_requests_queued_while_busy_share_one_call(self):
        model = Model()

        async def main():
            batcher = MicroBatcher(model, max_batch_size=32)
            first = await hold_first_call(batcher, model)
            items = [
                ("a", request(rows, seed))
                for seed, rows in enumerate([2, 3, 1, 4])
            ]
            tasks = queue(batcher, items)
            await until(lambda: batcher.num_queued == 4)
            assert batcher.num_in_flight == 1
            model.gate.set()
            outputs = await asyncio.gather(*tasks)
            await first
            return batcher, items, outputs

        batcher, items, outputs = asyncio.run(main())
        assert model.sizes == [1, 10]
        assert batcher.batch_sizes == {1: 1, 10: 1}
        for (key, arrays), output in zip(items, outputs):
            assert_outputs_equal(output, reference(key, arrays))

    def test_max_batch_size_and_oversize_requests(self):
        model = Model()

        async def main():
            batcher = MicroBatcher(model, max_batch_size=7)
            first = await hold_first_call(batcher, model)
            rows = [3, 3, 3, 10, 3, 3, 1]
            items = [("a", request(n, seed)) for seed, n in enumerate(rows)]
            tasks = queue(batcher, items)
            await until(lambda: batcher.num_queued == len(rows))
            model.gate.set()
            outputs = await asyncio.gather(first, *tasks)
            return items, outputs[1:]

        items, outputs = asyncio.run(main())
        # In arrival order: never above 7 rows, the 10-row request alone.
        assert model.sizes == [1, 6, 3, 10, 7]
        for (key, arrays), output in zip(items, outputs):
            assert_outputs_equal(output, reference(key, arrays))

    def test_one_client_is_dispatched_at_once(self):
        model = Model()

        async def main():
            batcher = MicroBatcher(model, max_batch_size=64)
            for seed in range(5):
                arrays = request(seed + 1, seed)
                task = asyncio.ensure_future(batcher.submit("a", arrays))
                # One loop iteration: the call was started inside `submit`,
                # nothing waits in the queue.
                await asyncio.sleep(0)
                assert batcher.num_in_flight == 1
                assert batcher.num_queued == 0
                assert_outputs_equal(await task, reference("a", arrays))
            return batcher

        batcher = asyncio.run(main())
        assert model.sizes == [1, 2, 3, 4, 5]
        assert batcher.num_calls == 5

    def test_batch_timeout_groups_idle_requests(self):
        model = Model()
        items = [("a", request(2, seed)) for seed in range(4)]

        async def main():
            batcher = MicroBatcher(
                model, max_batch_size=64, batch_timeout_ms=100
            )
            outputs = await asyncio.gather(
                *(batcher.submit(*item) for item in items)
            )
            return outputs

        outputs = asyncio.run(main())
        assert model.sizes == [8]
        for (key, arrays), output in zip(items, outputs):
            assert_outputs_equal(output, reference(key, arrays))

    def test_batch_timeout_waits_until_full_or_closed(self):
        model = Model()

        async def main():
            # A timeout no test outlives: only a full batch or `close`
            # dispatches.
            batcher = MicroBatcher(
                model, max_batch_size=4, batch_timeout_ms=3_600_000
            )
            waiting = asyncio.ensure_future(batcher.submit("a", request(1, 0)))
            await asyncio.sleep(0.01)
            assert batcher.num_queued == 1 and not model.calls
            full = queue(batcher, [("a", request(3, 1))])
            await asyncio.wait_for(asyncio.gather(waiting, *full), PATIENCE_S)
            assert model.sizes == [4]
            lonely = asyncio.ensure_future(batcher.submit("a", request(2, 2)))
            await asyncio.sleep(0.01)
            assert batcher.num_queued == 1
            await asyncio.wait_for(batcher.close(), PATIENCE_S)
            assert lonely.done()
            assert_outputs_equal(lonely.result(), reference("a", request(2, 2)))

        asyncio.run(main())
        assert model.sizes == [4, 2]

    def test_different_keys_never_merge(self):
        model = Model()

        async def main():
            batcher = MicroBatcher(model, max_batch_size=64)
            first = await hold_first_call(batcher, model, key="a")
            items = [(key, request(2, seed)) for seed, key in enumerate("abab")]
            items.append((("a", True), request(2, 9, threshold=True)))
            tasks = queue(batcher, items)
            await until(lambda: batcher.num_queued == len(items))
            model.gate.set()
            outputs = await asyncio.gather(first, *tasks)
            return items, outputs[1:]

        items, outputs = asyncio.run(main())
        assert [(key, rows) for key, rows, _ in model.calls] == [
            ("a", 1),
            ("a", 4),
            ("b", 4),
            (("a", True), 2),
        ]
        for (key, arrays), output in zip(items, outputs):
            assert_outputs_equal(output, reference(key, arrays))

    def test_mismatched_shapes_or_dtypes_never_merge(self):
        model = Model()
        items = [
            ("a", request(2, 0)),
            ("a", request(2, 1, width=5)),
            ("a", request(2, 2, dtype="float64")),
            ("a", {"x": request(2, 3)["x"].reshape(2, 2, 2)}),
            ("a", request(2, 4)),
            ("a", request(2, 5, width=5)),
        ]

        async def main():
            batcher = MicroBatcher(model, max_batch_size=64)
            first = await hold_first_call(batcher, model)
            tasks = queue(batcher, items)
            await until(lambda: batcher.num_queued == len(items))
            model.gate.set()
            outputs = await asyncio.gather(first, *tasks)
            return outputs[1:]

        outputs = asyncio.run(main())
        assert [(rows, layout["x"]) for _, rows, layout in model.calls] == [
            (1, ((4,), "<f4")),
            (4, ((4,), "<f4")),
            (4, ((5,), "<f4")),
            (2, ((4,), "<f8")),
            (2, ((2, 2), "<f4")),
        ]
        for (key, arrays), output in zip(items, outputs):
            assert_outputs_equal(output, reference(key, arrays))

    def test_a_failing_request_does_not_fail_its_batch(self):
        model = Model()
        bad = request(2, 3)
        bad["x"][1, 0] = BAD_VALUE
        items = [("a", request(1, 1)), ("a", request(2, 2)), ("a", bad)]
        items.append(("a", request(3, 4)))

        async def main():
            batcher = MicroBatcher(model, max_batch_size=64)
            first = await hold_first_call(batcher, model)
            tasks = queue(batcher, items)
            await until(lambda: batcher.num_queued == len(items))
            model.gate.set()
            outputs = await asyncio.gather(
                first, *tasks, return_exceptions=True
            )
            # The batcher still serves, and a lone failure is raised as is.
            alone = await batcher.submit("a", request(2, 5))
            with pytest.raises(ValueError, match="a bad row"):
                await batcher.submit("a", bad)
            return batcher, outputs[1:], alone

        batcher, outputs, alone = asyncio.run(main())
        assert isinstance(outputs[2], ValueError)
        for index in (0, 1, 3):
            key, arrays = items[index]
            assert_outputs_equal(outputs[index], reference(key, arrays))
        assert_outputs_equal(alone, reference("a", request(2, 5)))
        # The merged call failed; each request then ran alone.
        assert model.sizes == [1, 8, 1, 2, 2, 3, 2, 2]
        assert batcher.num_isolated_batches == 1
        assert batcher.num_calls == 8

    def test_outputs_without_one_row_per_input_row_are_refused(self):
        def totals(key, arrays):
            return {"total": arrays["x"].sum(axis=0)}

        async def main():
            batcher = MicroBatcher(totals, max_batch_size=8)
            with pytest.raises(ValueError, match="one row per input row"):
                await batcher.submit("a", request(2, 0))
            with pytest.raises(TypeError, match="must return a dict"):
                await MicroBatcher(lambda k, a: [1], 8).submit(
                    "a", request(1, 0)
                )

        asyncio.run(main())

    def test_cancelled_requests_do_not_break_others(self):
        model = Model()
        items = [
            ("a", request(rows, seed)) for seed, rows in enumerate([1, 2, 3])
        ]

        async def main():
            batcher = MicroBatcher(model, max_batch_size=64)
            first = await hold_first_call(batcher, model)
            tasks = queue(batcher, items)
            await until(lambda: batcher.num_queued == 3)
            # A waiting request and the one whose call runs go away.
            tasks[1].cancel()
            first.cancel()
            await until(lambda: batcher.num_queued == 2)
            model.gate.set()
            outputs = await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.wait_for(batcher.close(), PATIENCE_S)
            return batcher, first, outputs

        batcher, first, outputs = asyncio.run(main())
        assert first.cancelled()
        assert isinstance(outputs[1], asyncio.CancelledError)
        for index in (0, 2):
            key, arrays = items[index]
            assert_outputs_equal(outputs[index], reference(key, arrays))
        assert model.sizes == [1, 4]
        assert batcher.num_in_flight == batcher.num_queued == 0

    def test_close_answers_everything_then_refuses(self):
        model = Model()
        items = [("a", request(2, seed)) for seed in range(3)] + [
            ("b", request(1, 3))
        ]

        async def main():
            batcher = MicroBatcher(model, max_batch_size=64)
            first = await hold_first_call(batcher, model)
            tasks = queue(batcher, items)
            await until(lambda: batcher.num_queued == len(items))
            closing = asyncio.ensure_future(batcher.close())
            await asyncio.sleep(0.01)
            assert batcher.closed and not closing.done()
            with pytest.raises(RuntimeError, match="closed"):
                await batcher.submit("a", request(1, 0))
            model.gate.set()
            await asyncio.wait_for(closing, PATIENCE_S)
            assert first.done() and all(task.done() for task in tasks)
            await batcher.close()  # Again: nothing left, returns at once.
            return [task.result() for task in tasks]

        outputs = asyncio.run(main())
        for (key, arrays), output in zip(items, outputs):
            assert_outputs_equal(output, reference(key, arrays))
        assert model.sizes == [1, 6, 1]

    def test_close_of_an_unused_batcher_returns(self):
        batcher = MicroBatcher(Model(), max_batch_size=4)
        asyncio.run(asyncio.wait_for(batcher.close(), PATIENCE_S))
        assert batcher.closed

    def test_max_in_flight_calls_run_at_once(self):
        model = Model()
        executor = concurrent.futures.ThreadPoolExecutor(4)

        async def main():
            batcher = MicroBatcher(
                model, max_batch_size=64, max_in_flight=2, executor=executor
            )
            model.gate.clear()
            items = [("a", request(1, seed)) for seed in range(6)]
            tasks = queue(batcher, items)
            await until(lambda: len(model.calls) == 2)
            assert batcher.num_in_flight == 2 and batcher.num_queued == 4
            model.gate.set()
            outputs = await asyncio.gather(*tasks)
            return items, outputs

        items, outputs = asyncio.run(main())
        executor.shutdown()
        assert model.most_active == 2
        assert model.sizes[:3] == [1, 1, 4]
        for (key, arrays), output in zip(items, outputs):
            assert_outputs_equal(output, reference(key, arrays))

    def test_merged_outputs_are_disjoint_views(self):
        async def main():
            batcher = MicroBatcher(reference, max_batch_size=64)
            items = [("a", request(2, seed)) for seed in range(3)]
            outputs = await asyncio.gather(
                *(batcher.submit(*item) for item in items)
            )
            return items, outputs

        items, outputs = asyncio.run(main())
        # Requests 1 and 2 were merged; writing into one changes nothing of
        # the other.
        assert outputs[1]["logits"].base is outputs[2]["logits"].base
        outputs[1]["logits"][:] = 0
        for index in (0, 2):
            key, arrays = items[index]
            assert_outputs_equal(outputs[index], reference(key, arrays))

    @pytest.mark.parametrize(
        "arguments, message",
        [
            ({"max_batch_size": 0}, "max_batch_size"),
            ({"max_batch_size": 2.0}, "max_batch_size"),
            ({"max_batch_size": True}, "max_batch_size"),
            ({"batch_timeout_ms": -1}, "batch_timeout_ms"),
            ({"batch_timeout_ms": float("nan")}, "batch_timeout_ms"),
            ({"batch_timeout_ms": float("inf")}, "batch_timeout_ms"),
            ({"max_in_flight": 0}, "max_in_flight"),
        ],
    )
    def test_invalid_arguments(self, arguments, message):
        arguments = {"max_batch_size": 4, **arguments}
        with pytest.raises(ValueError, match=message):
            MicroBatcher(reference, **arguments)

    def test_run_batch_must_be_callable(self):
        with pytest.raises(TypeError, match="run_batch"):
            MicroBatcher("model", max_batch_size=4)

    @pytest.mark.parametrize(
        "key, arrays, error, message",
        [
            (["a"], {"x": np.zeros((1, 4))}, TypeError, "hashable"),
            ("a", {}, ValueError, "non-empty dict"),
            ("a", [np.zeros((1, 4))], ValueError, "non-empty dict"),
            ("a", {"x": np.float32(1)}, ValueError, "rank >= 1"),
            (
                "a",
                {"x": np.zeros((2, 4)), "t": np.zeros(3)},
                ValueError,
                "same length",
            ),
        ],
    )
    def test_invalid_requests(self, key, arrays, error, message):
        async def main():
            batcher = MicroBatcher(reference, max_batch_size=4)
            with pytest.raises(error, match=message):
                await batcher.submit(key, arrays)
            assert batcher.num_requests == 0

        asyncio.run(main())

    def test_imports_without_keras(self):
        code = (
            "import importlib.util, sys\n"
            "sys.modules['keras'] = None\n"
            "sys.modules['keras_tac'] = None\n"
            "spec = importlib.util.spec_from_file_location('b', "
            f"{batching.__file__!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "print(module.MicroBatcher.__name__)\n"
        )
        process = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True
        )
        assert process.returncode == 0, process.stderr
        assert process.stdout.strip() == "MicroBatcher"
