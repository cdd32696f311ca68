"""``kshot serve`` against the bare forward pass of the same backbone, on loopback, in one run.

1. latency: one client sends 500x500 PlantVillage photos one at a time (one image a request, a
   kept-alive HTTP connection) to ``POST /v1/libraries/NAME/query``; p50 and p99 of the time
   from sending to the parsed JSON answer, against the bare forward pass: the backbone module
   alone (``embedder.backbone``, NCHW, as torchvision gives it) on an already prepared
   ``(1, 3, 224, 224)`` tensor under ``torch.inference_mode()``. Target: p50 <= 1.3x.
2. throughput: 1, 4 and 16 clients, each sending its next photo as soon as it has its answer,
   for a fixed time; answered images/s against the bare batched forward (the backbone alone on a
   prepared batch of 16). Target at 16 clients: >= 0.8x. The server's mean batch size comes
   from its own ``/metrics``.
3. the same with a concurrent writer: one more client enrolling 4 photos into a class through
   the API every second, while the queries run.
4. the server process's memory (VmRSS, and its peak VmHWM) at the end.

Beside each wall-clock figure, the CPU time per image (all threads of the server process, from
/proc; the baseline's own): on a machine shared with other work, wall-clock time says how much
of the CPU the process got, CPU time what it spent.

The server is started as a user starts it (``python -m kshot serve LIB --port P``), on a library
of efficientnet_lite0's ImageNet features (installed weights: no network) holding 5 photos of
each of 8 classes. Clients are threads of this process, on the same machine: on a 2-core machine
they take CPU from the server, so the throughput figures are a floor. Bare-forward baselines are
measured in this process while the server is idle, in blocks alternating with the server's
rounds, with a pause at each switch (so that neither process's idle OpenMP threads spin against
the other's forward pass). ``--threads N`` runs torch with N threads in the server and in the
baseline alike: on a machine shared with other work, two OpenMP threads that wait on each other
make single passes 10-50x slower at random; one thread does not.

    python benchmarks/serve.py --json serve.json       # about 2-5 minutes
    python benchmarks/serve.py --quick                 # smoke test
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from kshot.embedder.images import class_folders
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.runtime import tune_allocator
from kshot.fewshot.library import Library
from kshot.index.vector_index import IndexSpec
from kshot.serve.client import multipart_body

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "plantvillage-leaf38"
BACKBONE = "efficientnet_lite0"
CLASSES, SHOTS = 8, 5
CLIENTS = (1, 4, 16)
LATENCY_TARGET, THROUGHPUT_TARGET = 1.3, 0.8
SETTLE_S = 0.5  # pause when switching between the server and the bare forward


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Connection:
    """One kept-alive HTTP connection to the server."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, name: str, data: bytes) -> dict:
        body, kind = multipart_body([(name, data)])
        try:
            self.connection.request("POST", path, body, {"Content-Type": kind})
            response = self.connection.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected):
            # the server closes a connection idle for 5 s (uvicorn's keep-alive): open anew
            self.connection.close()
            self.connection.request("POST", path, body, {"Content-Type": kind})
            response = self.connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {answer}")
        return answer


def start_server(
    library: Path, port: int, threads: int | None, options: list[str]
) -> subprocess.Popen:
    command = [sys.executable, "-m", "kshot", "serve", str(library), "--port", str(port)]
    command += options
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not get ready in 120 s")


def batch_stats(port: int) -> tuple[float, float]:
    """``(sum, count)`` of the server's images-per-forward-pass histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        for key in ("kshot_batch_images_sum", "kshot_batch_images_count"):
            if line.startswith(key + "{"):
                values[key] = float(line.rsplit(" ", 1)[1])
    return values.get("kshot_batch_images_sum", 0.0), values.get("kshot_batch_images_count", 0.0)


def memory(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # MiB
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_forward(backbone: torch.nn.Module, batch: int, repeats: int) -> tuple[list[float], float]:
    """Wall-clock ms of each of ``repeats`` passes, and the CPU ms they used per image."""
    x = torch.randn(batch, 3, 224, 224)
    times = []
    with torch.inference_mode():
        backbone(x)
        cpu = time.process_time()
        for _ in range(repeats):
            started = time.perf_counter()
            backbone(x)
            times.append((time.perf_counter() - started) * 1000)
        cpu = time.process_time() - cpu
    return times, cpu * 1000 / (batch * repeats)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run_clients(
    server: int,
    port: int,
    library: str,
    photos: list[bytes],
    clients: int,
    seconds: float,
    writer: bool,
) -> dict:
    """``clients`` threads querying back to back for ``seconds``; with ``writer``, one more
    enrolling 4 photos every second. Returns answered images/s and the server's batch sizes."""
    path = f"/v1/libraries/{library}/query"
    stop = threading.Event()
    answered = [0] * clients
    failures: list[str] = []
    enrolled = [0]

    def client(i: int) -> None:
        connection = Connection(port)
        n = i
        while not stop.is_set():
            try:
                connection.post(path, f"{n}.jpg", photos[n % len(photos)])
            except Exception as exc:  # counted, shown, and the run goes on
                failures.append(str(exc))
                connection = Connection(port)
                continue
            answered[i] += 1
            n += clients

    def enroller() -> None:
        connection = Connection(port)
        round_ = 0
        while not stop.wait(1.0):
            images = photos[(4 * round_) % len(photos) :][:4]
            for j, data in enumerate(images):  # a new class each round: never duplicates
                enroll = f"/v1/libraries/{library}/classes/writer-{round_}/images"
                connection.post(enroll, f"w{round_}-{j}.jpg", data)
                enrolled[0] += 1
            round_ += 1

    before, cpu = batch_stats(port), cpu_seconds(server)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if writer:
        threads.append(threading.Thread(target=enroller))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    after, cpu = batch_stats(port), cpu_seconds(server) - cpu
    batches = after[1] - before[1]
    return {
        "clients": clients,
        "writer": writer,
        "images_per_s": sum(answered) / elapsed,
        "answered": sum(answered),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "enrolled": enrolled[0],
        "mean_batch": (after[0] - before[0]) / batches if batches else 0.0,
        "server_cpu_ms_per_image": cpu * 1000 / max(1, sum(answered)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput round")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads, in the server (OMP_NUM_THREADS) and for the bare forward alike "
        "(default: torch's own); 1 keeps a shared machine's timings steady",
    )
    parser.add_argument("--max-batch", type=int, help="the server's --max-batch")
    parser.add_argument(
        "--backbone", default=BACKBONE, help=f"the library's embedder (default {BACKBONE})"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.latency_queries, args.seconds = 10, 1.5
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: PlantVillage photos not found")
    load_before = f"{os.getloadavg()[0]:.1f}"
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = [(folder, images) for folder, images in class_folders(DATA) if len(images) > 20]
    enroll = [(p, f.name) for f, images in folders[:CLASSES] for p in images[:SHOTS]]
    queries = [p for _, images in folders for p in images[SHOTS : SHOTS + 6]]
    photos = [p.read_bytes() for p in queries]
    say(f"{len(enroll)} photos to enroll, {len(photos)} query photos from {DATA}")

    with tempfile.TemporaryDirectory(prefix="kshot-serve-bench-") as tmp:
        root = Path(tmp) / "leaves"
        embedder = build_embedder(EmbedderConfig.for_backbone(args.backbone), pretrained=True)
        library = Library.create(root, embedder, {}, IndexSpec(kind="flat"), device="cpu")
        library.enroll(enroll)
        backbone = library.embedder.backbone.to(memory_format=torch.contiguous_format).eval()
        options = ["--max-batch", str(args.max_batch)] if args.max_batch else []
        server = start_server(root, args.port, args.threads, options)
        path = "/v1/libraries/leaves/query"
        try:
            connection = Connection(args.port)
            for i in range(5):  # warm-up
                connection.post(path, "warm.jpg", photos[i])
            latencies, bare, bare_batch, bare_cpu, batch_cpu = [], [], [], [], []
            server_cpu = 0.0
            # In blocks, alternating, with a pause between: both see the same machine, and the
            # idle OpenMP threads of one process do not spin against the other's forward pass.
            block = 10
            for start in range(0, args.latency_queries, block):
                time.sleep(SETTLE_S)
                cpu = cpu_seconds(server.pid)
                for i in range(start, min(start + block, args.latency_queries)):
                    began = time.perf_counter()
                    connection.post(path, f"{i}.jpg", photos[i % len(photos)])
                    latencies.append((time.perf_counter() - began) * 1000)
                server_cpu += cpu_seconds(server.pid) - cpu
                time.sleep(SETTLE_S)
                times, cpu_ms = bare_forward(backbone, 1, block)
                bare += times
                bare_cpu.append(cpu_ms)
            rounds = []
            for writer in (False, True):
                for clients in CLIENTS:
                    say(f"{clients} client(s){' and a writer' if writer else ''}...")
                    rounds.append(
                        run_clients(
                            server.pid, args.port, "leaves", photos, clients, args.seconds, writer
                        )
                    )
                    time.sleep(SETTLE_S)
                    times, cpu_ms = bare_forward(backbone, 16, 2)
                    bare_batch += times
                    batch_cpu.append(cpu_ms)
            mem = memory(server.pid)
        finally:
            server.terminate()
            server.wait(30)

    bare_p50 = statistics.median(bare)
    bare_batch_ips = 16 * 1000 / statistics.median(bare_batch)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "cpu_ms_per_image": {
            "server_1_client": server_cpu * 1000 / len(latencies),
            "bare_batch1": statistics.median(bare_cpu),
            "bare_batch16": statistics.median(batch_cpu),
        },
        "latency_ms": {
            "server_p50": statistics.median(latencies),
            "server_p99": percentile(latencies, 99),
            "bare_p50": bare_p50,
            "bare_p99": percentile(bare, 99),
            "queries": len(latencies),
        },
        "bare_batch16_images_per_s": bare_batch_ips,
        "server_max_batch": args.max_batch or "default",
        "throughput": rounds,
        "server_memory_mib": mem,
    }
    lat, cpu = results["latency_ms"], results["cpu_ms_per_image"]
    ratio = lat["server_p50"] / bare_p50
    verdict = "ok" if ratio <= LATENCY_TARGET else "MISS"
    print(
        f"| 1 client, {lat['queries']} queries | server p50 / p99 ms "
        "| bare forward p50 / p99 ms | ratio (p50) | target | CPU ms/image server / bare |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| 500x500, {args.backbone} | {lat['server_p50']:.1f} / {lat['server_p99']:.1f} | "
        f"{bare_p50:.1f} / {lat['bare_p99']:.1f} | {ratio:.2f}x {verdict} | "
        f"<= {LATENCY_TARGET}x | {cpu['server_1_client']:.1f} / {cpu['bare_batch1']:.1f} |"
    )
    print()
    print(
        "| clients | writer | images/s | vs bare batch-16 | target | mean batch "
        "| CPU ms/image server / bare-16 | failures | enrolled |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rounds:
        share = r["images_per_s"] / bare_batch_ips
        target = f">= {THROUGHPUT_TARGET}x" if r["clients"] == 16 else ""
        mark = (" ok" if share >= THROUGHPUT_TARGET else " MISS") if target else ""
        print(
            f"| {r['clients']} | {'yes' if r['writer'] else 'no'} | {r['images_per_s']:.1f} | "
            f"{share:.2f}x{mark} | {target} | {r['mean_batch']:.1f} | "
            f"{r['server_cpu_ms_per_image']:.1f} / {cpu['bare_batch16']:.1f} | "
            f"{r['failures']} | {r['enrolled']} |"
        )
    print()
    print(
        f"bare batched forward (batch 16): {bare_batch_ips:.1f} images/s; server memory: "
        f"{mem.get('VmRSS', 0):.0f} MiB resident, peak {mem.get('VmHWM', 0):.0f} MiB; "
        f"load average before / after: {load_before} / {os.getloadavg()[0]:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
