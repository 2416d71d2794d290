"""The model service under load against offline predict, on the same machine and checkpoint, in one run.

python benchmarks/serve.py --ckpt PATH [--studies 48] [--views 3] [--image-size 256] [--concurrency 1 4 16]
    [--max-batch-images 16] [--max-wait-ms 10] [--max-seconds 900]

Writes `--studies` studies of `--views` random PNG radiographs into a temporary folder, starts
`python -m mura_lightning.serve` on a free loopback port (nothing leaves this machine), and for each concurrency sends
every study once from that many clients (httpx, one connection each), after a warm-up: latency p50/p95/p99, studies/s,
images/s, errors (answers other than 200) and mismatches (a study probability more than 1e-5 from predict's).
Offline predict is `predict_files` with predict's own batch size and workers (conf/predict.yaml) on a model loaded
once, run before and after the service's rounds; the ratio is against the mean of the two, so the drift of a shared
machine cancels to first order. `offline_study_ms` is the median time of predicting one study alone (predict on one
study folder, the model loaded). The script stops by itself: each round is a fixed count of studies, and the whole
run is cut at `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from mura_lightning.cli import CONFIG_DIR
from mura_lightning.inference.files import predict_files
from mura_lightning.inference.model import InferenceModel

TOLERANCE = 1e-5
START_S = 180


def write_studies(folder: Path, studies: int, views: int, size: int) -> list[list[Path]]:
    """`studies` folders of `views` smooth random grayscale PNGs (`size` px a side); each study's files."""
    rng = np.random.default_rng(0)
    result = []
    for study in range(studies):
        files = []
        for view in range(views):
            coarse = rng.integers(0, 256, size=(size // 8, size // 8), dtype=np.uint8)
            pixels = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
            path = folder / f"patient{study:05d}" / "study1" / f"image{view + 1}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            files.append(path)
        result.append(files)
    return result


def predict_settings() -> tuple[int, int]:
    """predict's batch size and workers, from conf/predict.yaml."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG_DIR / "predict.yaml")
    return int(cfg.batch_size), int(cfg.num_workers)


def offline(model: InferenceModel, studies: list[list[Path]], batch_size: int, workers: int) -> tuple[float, Any]:
    """Seconds to predict every study as predict does, and each study's probability."""
    files = [path for study in studies for path in study]
    codes = np.repeat(np.arange(len(studies)), [len(study) for study in studies])
    started = time.perf_counter()
    result = predict_files(model, files, studies=codes, batch_size=batch_size, num_workers=workers)
    return time.perf_counter() - started, result.study_probs


def one_study_seconds(model: InferenceModel, studies: list[list[Path]], batch_size: int) -> float:
    """The median time of predicting one study alone (in this process, no workers: one small batch)."""
    times = []
    for study in studies[:7]:
        started = time.perf_counter()
        predict_files(model, study, studies=np.zeros(len(study), dtype=np.int64), batch_size=batch_size)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    """The service of the checkpoint on 127.0.0.1:`port`, once /readyz answers."""
    command = [
        sys.executable,
        "-m",
        "mura_lightning.serve",
        f"ckpt_path={args.ckpt}",
        f"serve.port={port}",
        f"serve.batching.max_batch_images={args.max_batch_images}",
        f"serve.batching.max_wait_ms={args.max_wait_ms}",
        f"serve.limits.max_images={args.views}",
        "device=cpu",
    ]
    with log.open("w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the service did not start: {log.read_text()[-2000:]}")


async def load_round(url: str, studies: list[list[Path]], expected: np.ndarray, concurrency: int) -> dict:
    """Every study sent once by `concurrency` clients: latencies, wall time, errors and mismatches."""
    payloads = [[("files", (path.name, path.read_bytes(), "image/png")) for path in study] for study in studies]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(studies)):
        queue.put_nowait(index)
    latencies, errors, mismatches = [], 0, 0

    async def client() -> None:
        nonlocal errors, mismatches
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while not queue.empty():
                index = queue.get_nowait()
                started = time.perf_counter()
                try:
                    answer = await http.post("/v1/studies", files=payloads[index])
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    errors += 1
                elif abs(answer.json()["study"]["probability"] - expected[index]) > TOLERANCE:
                    mismatches += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {"latencies": latencies, "wall": wall, "errors": errors, "mismatches": mismatches}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    """Print the settings, then `name=value` lines per concurrency and the offline baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch-images", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument("--max-seconds", type=int, default=900)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"stopped after --max-seconds={args.max_seconds}"))
    signal.alarm(args.max_seconds)
    batch_size, workers = predict_settings()
    model = InferenceModel.from_checkpoints(args.ckpt)
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        studies = write_studies(Path(tmp) / "studies", args.studies, args.views, args.image_size)
        offline(model, studies[:4], batch_size, workers)  # warm-up
        before, expected = offline(model, studies, batch_size, workers)
        study_s = one_study_seconds(model, studies, batch_size)
        port = free_port()
        server = start_server(args, port, Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(load_round(url, studies[:8], expected[:8], 2))  # warm-up
            rounds = {c: asyncio.run(load_round(url, studies, expected, c)) for c in args.concurrency}
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        after, _ = offline(model, studies, batch_size, workers)
    images = args.studies * args.views
    offline_images_s = images / ((before + after) / 2)
    print(
        f"studies={args.studies} views={args.views} image_size={args.image_size} "
        f"model_input={model.preprocessing.image_size} backbone={'+'.join(model.names)} "
        f"max_batch_images={args.max_batch_images} max_wait_ms={args.max_wait_ms} "
        f"predict_batch_size={batch_size} predict_workers={workers} cpus={os.cpu_count()} "
        f"load_average={os.getloadavg()[0]:.1f}"
    )
    figures = {
        "offline_images_per_s": f"{offline_images_s:.1f}",
        "offline_images_per_s_before": f"{images / before:.1f}",
        "offline_images_per_s_after": f"{images / after:.1f}",
        "offline_study_ms": f"{study_s * 1000:.1f}",
    }
    for concurrency, result in rounds.items():
        latencies, wall = result["latencies"], result["wall"]
        served_images_s = len(latencies) * args.views / wall
        figures |= {
            f"c{concurrency}_p50_ms": f"{percentile(latencies, 50) * 1000:.1f}",
            f"c{concurrency}_p95_ms": f"{percentile(latencies, 95) * 1000:.1f}",
            f"c{concurrency}_p99_ms": f"{percentile(latencies, 99) * 1000:.1f}",
            f"c{concurrency}_studies_per_s": f"{len(latencies) / wall:.2f}",
            f"c{concurrency}_images_per_s": f"{served_images_s:.1f}",
            f"c{concurrency}_errors": str(result["errors"]),
            f"c{concurrency}_mismatches": str(result["mismatches"]),
            f"c{concurrency}_over_offline": f"{served_images_s / offline_images_s:.2f}",
            f"c{concurrency}_p99_over_offline_study": f"{percentile(latencies, 99) / study_s:.2f}",
        }
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
