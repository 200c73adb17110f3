"""Load on the model server: `python -m keras_tac.serve` on localhost.

    KERAS_BACKEND=tensorflow python -m benchmarks.serving          # figures
    KERAS_BACKEND=torch python -m benchmarks.serving --short       # CI

Exports the example CNN (28x28x1 inputs, TAC with the default taps and
confidence; SavedModel on TensorFlow and JAX, ONNX on PyTorch), and starts
the server as a subprocess twice, without server-side batching
(`--max-batch-size 0`) and with it (the default), one after the other in
the same run. For each batch size (rows per request) and number of
concurrent clients it sends V1 row requests for a fixed time, on
keep-alive connections written on raw asyncio streams (a light load
generator: the client shares the machine's cores with the server):
requests and rows per second, p50 / p99 latency, errors (must be 0) and the
server's resident memory. The same batches through the loaded signature in
this process give the reference: the ratio of the server's p50 latency at
one client to the in-process call is what HTTP, JSON and KServe add; the
ratios of batching on to off (single-row throughput at the most clients,
p50 at one client, p99 at 8) are what batching changes. Prints a table and
writes `benchmarks/results/serving_<mode>_<backend>.json`.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import httpx
import keras
import numpy as np
import psutil

from benchmarks import common
from keras_tac import TACModel
from keras_tac.serve import load_signatures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
NAME = "tac"
# The server options of each configuration, in the order they run.
BATCHING = {"off": ("--max-batch-size", "0"), "on": ()}


def _export(folder):
    """A fitted, calibrated TAC on the example CNN, exported; returns the
    artifact's path and sample inputs."""
    rng = np.random.default_rng(0)
    x = rng.random((512, 28, 28, 1), dtype="float32")
    y = rng.integers(0, 10, 512)
    tac = TACModel(common.mnist_cnn())
    tac.compile(optimizer="adam")
    with warnings.catch_warnings():
        # Random labels: TAC learns nothing, and says so; speed is the same.
        warnings.simplefilter("ignore", UserWarning)
        tac.fit(x, y, batch_size=128, epochs=1, verbose=0)
    tac.calibrate(x[:256], target_coverage=0.8, verbose=0)
    backend = keras.backend.backend()
    artifact = os.path.join(folder, "tac.onnx" if backend == "torch" else "tac")
    tac.export(
        artifact,
        format="onnx" if backend == "torch" else "tf_saved_model",
        verbose=False,
    )
    return artifact, x


def start_server(artifact, log, *options, python_flags=()):
    """Starts `python -m keras_tac.serve` on `artifact` on a free
    127.0.0.1 port, its output to the open file `log`, and waits until it
    is ready. `options` go to the server, `python_flags` to Python.

    Returns:
        `(process, url)`.

    Raises:
        RuntimeError: if the server exits or is not ready within 300 s.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            *python_flags,
            "-m",
            "keras_tac.serve",
            "--model",
            artifact,
            "--name",
            NAME,
            "--http-port",
            str(port),
            *options,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            if (
                httpx.get(f"{url}/v2/health/ready", timeout=2).status_code
                == 200
            ):
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError("the server did not become ready in 300 s")


async def _load(url, body, clients, seconds):
    """`clients` concurrent loops posting `body` for `seconds`, each on its
    own keep-alive connection.

    The requests are written and the responses read on raw asyncio
    streams, as a load generator such as `wrk` does: an HTTP client library
    costs the client more CPU per request than the server spends (httpx:
    about 4 ms at 32 connections on this machine), and client and server
    share the cores."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    request = (
        f"POST /v1/models/{NAME}:predict HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def loop():
        nonlocal errors
        reader = writer = None
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(
                        host, int(port)
                    )
                writer.write(request)
                status, keep_alive = await _read_response(reader)
                ok = status == 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok, keep_alive = False, False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
            if not keep_alive and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


async def _read_response(reader):
    """Reads one HTTP/1.1 response; returns `(status, keep_alive)`."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers.get("connection") != "close"


def _in_process_seconds(artifact, batch, repeats):
    """Median seconds per call of the loaded signature on `batch`."""
    signature = load_signatures(artifact)["serving_default"]
    (name,) = signature.inputs
    times = common.interleaved(
        {"call": lambda: signature.fn(**{name: batch})}, repeats
    )["call"]
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.short else 8.0)
    client_counts = (1, 8) if args.short else (1, 8, 32)
    batch_sizes = (1, 32)
    backend = keras.backend.backend()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        artifact, x = _export(folder)
        in_process = {
            batch_size: _in_process_seconds(artifact, x[:batch_size], 30)
            for batch_size in batch_sizes
        }
        rows, memory = [], {}
        # The same load on a server without and with server-side batching,
        # one after the other in this run.
        for batching, options in BATCHING.items():
            log = open(os.path.join(folder, f"server_{batching}.log"), "w")
            process, url = start_server(artifact, log, *options)
            server = psutil.Process(process.pid)
            try:
                # Warm up (first requests allocate the server's pools), then
                # take the memory figure that later steps are held against.
                warm_up = json.dumps({"instances": x[:32].tolist()}).encode()
                asyncio.run(_load(url, warm_up, 8, min(seconds, 2.0)))
                rss_start = server.memory_info().rss
                for batch_size in batch_sizes:
                    body = json.dumps(
                        {"instances": x[:batch_size].tolist()}
                    ).encode()
                    for clients in client_counts:
                        latencies, errors, elapsed = asyncio.run(
                            _load(url, body, clients, seconds)
                        )
                        p50, p99 = np.percentile(latencies, [50, 99])
                        reference = in_process[batch_size]
                        rows.append(
                            {
                                "batching": batching,
                                "batch": batch_size,
                                "clients": clients,
                                "requests_per_s": len(latencies) / elapsed,
                                "rows_per_s": batch_size
                                * len(latencies)
                                / elapsed,
                                "p50_ms": 1000 * p50,
                                "p99_ms": 1000 * p99,
                                "errors": errors,
                                "in_process_ms": 1000 * reference,
                                "p50_over_in_process": p50 / reference,
                                "server_rss_mib": server.memory_info().rss
                                / 2**20,
                            }
                        )
                memory[batching] = {
                    "start": rss_start / 2**20,
                    "end": server.memory_info().rss / 2**20,
                }
            finally:
                process.terminate()
                process.wait(timeout=60)
                log.close()
    result = {
        "mode": "short" if args.short else "full",
        "seconds_per_step": seconds,
        "machine": common.machine(),
        "commit": common.commit_stamp(),
        "load_average_before": load_before,
        "server_rss_mib": memory,
        "rows": rows,
        "batching_ratios": batching_ratios(rows),
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"serving_{result['mode']}_{backend}.json")
    with open(path, "w") as file:
        json.dump(result, file, indent=1)
    print(format_table(result))
    errors = sum(row["errors"] for row in rows)
    if errors:
        print(f"FAILED: {errors} requests did not get HTTP 200")
    return 1 if errors else 0


def batching_ratios(rows):
    """Batching on over off, from the rows of one run: single-row
    requests/s at the most clients, p99 at 8 clients and p50 at one."""
    by = {(r["batching"], r["batch"], r["clients"]): r for r in rows}
    most = max(r["clients"] for r in rows)
    ratios = {
        f"throughput_1_row_{most}_clients": by["on", 1, most]["requests_per_s"]
        / by["off", 1, most]["requests_per_s"],
        "p50_1_row_1_client": by["on", 1, 1]["p50_ms"]
        / by["off", 1, 1]["p50_ms"],
    }
    if ("on", 1, 8) in by:
        ratios["p99_1_row_8_clients"] = (
            by["on", 1, 8]["p99_ms"] / by["off", 1, 8]["p99_ms"]
        )
    return ratios


def format_table(result):
    memory = "; ".join(
        f"batching {name}: server RSS after warm-up {value['start']:.0f} "
        f"MiB, at the end {value['end']:.0f} MiB"
        for name, value in result["server_rss_mib"].items()
    )
    lines = [
        f"Serving, {result['machine']['backend']}, commit {result['commit']}, "
        f"{result['seconds_per_step']:g} s per step, load average "
        f"{result['load_average_before']:.1f}; {memory}",
        "",
        "| batching | rows/request | clients | requests/s | rows/s | p50 ms "
        "| p99 ms | errors | in-process ms | p50 / in-process |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['batching']} | {row['batch']} | {row['clients']} "
            f"| {row['requests_per_s']:.0f} | {row['rows_per_s']:.0f} "
            f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} "
            f"| {row['in_process_ms']:.2f} "
            f"| {row['p50_over_in_process']:.1f}x |"
        )
    ratios = ", ".join(
        f"{name.replace('_', ' ')} {value:.2f}x"
        for name, value in result["batching_ratios"].items()
    )
    lines += ["", f"Batching on / off, same run: {ratios}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
