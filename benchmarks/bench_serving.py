"""Latency and images/s of a generator model served as users serve it (`mlflow models serve`).

    python benchmarks/bench_serving.py                      # the default config's generator
    python benchmarks/bench_serving.py --model models:/gan-generator@champion --repeats 30
    python benchmarks/bench_serving.py --venv /path/to/clean-venv   # serve from another env

Without --model it saves the default config's generator (dcgan, width 64, latent 100,
28x28 gray; untrained weights cost what trained ones do) with save_generator, the format
every run logs. The server runs `--env-manager local` on 127.0.0.1 from --venv (default:
this interpreter's environment); each size is asked --repeats times with a new seed after
warm-up requests, one request at a time, timed at the client from send to the whole JSON
answer parsed. Also times the same predict in this process (no HTTP, no JSON) to show
what serving adds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_folder(model: str | None, arch: str, into: Path) -> Path:
    if model:
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(into)))
    from gan.config import make_config
    from gan.models import build_models
    from pipelines.tracking.generator_model import save_generator

    cfg = make_config({"arch": arch})
    G, _ = build_models(cfg, (1, 28, 28))
    return save_generator(G, into / "generator", cfg.latent_dim)


def serve(folder: Path, venv: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.Popen(
        ["mlflow", "models", "serve", "-m", str(folder), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit("the server exited; see its log")
        try:
            if urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200:
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not answer /ping")


def ask(url: str, n: int, seed: int, fmt: str) -> float:
    body = json.dumps({"dataframe_records": [{"seed": seed, "num_images": n}], "params": {"format": fmt}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as answer:
        predictions = json.loads(answer.read())["predictions"]
    took = time.perf_counter() - started
    assert len(predictions) == n
    return took


def in_process(folder: Path, n: int, repeats: int, fmt: str) -> float:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(folder))
    times = []
    for seed in range(repeats + 2):
        started = time.perf_counter()
        model.predict(pd.DataFrame(), params={"num_images": n, "seed": seed, "format": fmt})
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model URI or folder (default: the default config's generator)")
    ap.add_argument("--arch", default="dcgan", choices=["dcgan", "mlp"], help="without --model")
    ap.add_argument("--venv", default=str(Path(sys.executable).parent.parent), help="environment to serve from")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = model_folder(args.model, args.arch, Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = serve(folder, Path(args.venv), port, Path(tmp) / "serve.log")
        try:
            start_s = wait_up(url, proc)
            for seed in range(3):  # warm-up: first calls pay for lazy imports and allocations
                ask(url, max(args.sizes), seed, "png")
            print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"load {os.getloadavg()[0]:.2f}; server up in {start_s:.1f} s; {args.repeats} requests each")
            print("| num_images | format | median latency | p90 | images/s (median) | in-process predict |")
            print("| --- | --- | --- | --- | --- | --- |")
            for n in args.sizes:
                for fmt in ("png", "array"):
                    times = sorted(ask(url, n, 1000 + i, fmt) for i in range(args.repeats))
                    median = statistics.median(times)
                    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
                    local = in_process(folder, n, max(5, args.repeats // 4), fmt)
                    print(f"| {n} | {fmt} | {median * 1e3:.1f} ms | {p90 * 1e3:.1f} ms | {n / median:,.0f} "
                          f"| {local * 1e3:.1f} ms |", flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
