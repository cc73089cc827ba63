"""The GPU figures in one command (<= 8 min on an H100/H200): DCGAN training images/s,
Inception FID of 10k images, and trials per hour with 1, 2 and 4 trials sharing the GPU.
Writes PREFIX.json and PREFIX.md.

    python benchmarks/gpu.py                      # on a CUDA machine -> benchmarks/gpu_results.{json,md}
    python benchmarks/gpu.py --smoke --out /tmp/g # CPU, tiny sizes, seconds (CI); CUDA-only variants skipped

Training (DCGAN width 64, 32x32 RGB, CIFAR-10-shaped synthetic uint8, no download):
the tutorial loop (torchvision-style dataset: PIL image + ToTensor + Normalize per
sample, DataLoader, default Adam, fp32) vs gan.train.train (fp32, bf16 autocast) vs the
same step with what gan.train does not switch on yet (channels_last, torch.compile, a
CUDA graph of the whole step). Every variant runs in try/except (an error is recorded,
the rest go on) and the whole run keeps to --budget-s, skipping what no longer fits.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's loops
from bench_train_throughput import dataloader_loop, pipeline_loop  # noqa: E402
from step_variants import step_loop  # noqa: E402

from gan.callbacks import Callbacks, StopTraining  # noqa: E402
from gan.config import make_config  # noqa: E402
from gan.data import ImageData, to_uint8  # noqa: E402
from gan.models import build_models  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    images: int  # synthetic training images (CIFAR-10 has 50k)
    batch: int
    width: int  # DCGAN width
    steps: int  # timed steps per variant, after `warmup`
    warmup: int
    fid_images: int  # real and generated images each
    trial_seconds: float  # how long each concurrent trial process trains
    trial_kimg: float  # the work of one trial: 4 epochs of CIFAR-10 by default
    concurrency: tuple[int, ...]  # trial processes sharing the device at once
    budget_s: float


FULL = Sizes(images=50_000, batch=128, width=64, steps=300, warmup=30, fid_images=10_000,
             trial_seconds=40, trial_kimg=200, concurrency=(1, 2, 4), budget_s=450)
SMOKE = Sizes(images=256, batch=16, width=8, steps=3, warmup=2, fid_images=16,
              trial_seconds=2, trial_kimg=1, concurrency=(1, 2), budget_s=600)  # 2 CI cores


def synthetic_cifar(n: int, seed: int = 0) -> ImageData:
    """n random uint8 32x32 RGB images: CIFAR-10's shape and dtype, nothing downloaded."""
    g = torch.Generator().manual_seed(seed)
    return ImageData("synthetic-cifar10", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), None)


class TutorialCIFAR(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__ over in-memory arrays: a PIL image through
    ToTensor + Normalize per sample (its files need a download; the per-sample work is this)."""

    def __init__(self, data: ImageData) -> None:
        import torchvision.transforms as T

        self.hwc = data.images.permute(0, 2, 3, 1).contiguous().numpy()  # CIFAR10 keeps HWC uint8
        self.transform = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])

    def __len__(self) -> int:
        return len(self.hwc)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.hwc[i])), 0


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def attempt(budget: Budget, need_s: float, fn: Any, *args: Any, **kw: Any) -> dict[str, Any]:
    """fn's result as {status: ok, ...}, or the error / the skip reason, never an exception."""
    if budget.left() < need_s:
        return {"status": "skipped", "reason": f"time budget: {budget.left():.0f} s left, needs ~{need_s:.0f} s"}
    start = time.perf_counter()
    try:
        out = fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - a benchmark records every failure and goes on
        return {"status": "error", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                "seconds": time.perf_counter() - start}
    return {"status": "ok", **out, "seconds": time.perf_counter() - start}


def training(sz: Sizes, device: torch.device, budget: Budget, workers: int) -> dict[str, Any]:
    data = synthetic_cifar(sz.images)
    cuda = device.type == "cuda"
    # log_every: the default 10 on a real run; smoke runs have too few steps for two flushes
    base = {"arch": "dcgan", "dcgan_width": sz.width, "batch_size": sz.batch, "epochs": 1,
            "log_every": 10 if sz.steps >= 20 else 1, "device": device.type}
    fp32, bf16 = make_config({**base, "amp": False}), make_config({**base, "amp": True})
    steps = sz.steps
    variants: dict[str, tuple[bool, float, Any]] = {  # name: (runs on CPU, seconds it may need, call)
        "tutorial (DataLoader, fp32)": (True, 60, lambda: dataloader_loop(
            fp32, TutorialCIFAR(data), (3, 32, 32), steps, workers, device, sz.warmup)),
        "ours: gan.train fp32": (True, 30, lambda: pipeline_loop(fp32, data, steps + sz.warmup)),
        "ours: gan.train bf16 autocast": (False, 30, lambda: pipeline_loop(bf16, data, steps + sz.warmup)),
        "ours: step fp32 channels_last": (True, 30, lambda: step_loop(
            fp32, data, steps, sz.warmup, device, channels_last=True)),
        "ours: step bf16 channels_last": (False, 30, lambda: step_loop(
            bf16, data, steps, sz.warmup, device, bf16=True, channels_last=True)),
        "ours: step bf16 channels_last torch.compile": (False, 120, lambda: step_loop(
            bf16, data, steps, sz.warmup, device, bf16=True, channels_last=True, compiled=True)),
        "ours: step bf16 channels_last CUDA graph": (False, 30, lambda: step_loop(
            bf16, data, steps, sz.warmup, device, bf16=True, channels_last=True, cuda_graph=True)),
    }
    out: dict[str, Any] = {}
    for name, (on_cpu, need, call) in variants.items():
        if not (cuda or on_cpu):
            out[name] = {"status": "skipped", "reason": "needs CUDA"}
            continue
        out[name] = attempt(budget, need, lambda call=call: {"images_per_s": call()})
        print(f"train  {name:45s} {out[name]}", flush=True)
    tutorial = out["tutorial (DataLoader, fp32)"].get("images_per_s")
    for r in out.values():
        if tutorial and "images_per_s" in r:
            r["vs_tutorial"] = r["images_per_s"] / tutorial
    return out


def fid(sz: Sizes, device: torch.device) -> dict[str, Any]:
    """Inception FID of fid_images generated (fresh DCGAN) vs as many 'real' (synthetic) images."""
    from gan.metrics import extract, frechet_distance, load_inception

    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # fp32 features, as on CPU and in papers
    try:
        t = [time.perf_counter()]
        inception = load_inception(device=device)
        if device.type == "cuda":
            inception.batch_size = 250  # the CPU default (16) would starve the GPU
        t.append(time.perf_counter())
        real = extract(inception, synthetic_cifar(sz.fid_images, seed=1).images, progress=False)
        _sync(device)
        t.append(time.perf_counter())
        torch.manual_seed(0)
        G = build_models(make_config({"arch": "dcgan", "dcgan_width": sz.width}), (3, 32, 32))[0].to(device).eval()
        with torch.no_grad():
            fakes = torch.cat([to_uint8(G(torch.randn(500, 100, device=device))).cpu()
                               for _ in range(math.ceil(sz.fid_images / 500))])[: sz.fid_images]
        t.append(time.perf_counter())
        fake = extract(inception, fakes, progress=False)
        _sync(device)
        t.append(time.perf_counter())
        value = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
        t.append(time.perf_counter())
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    d = [b - a for a, b in zip(t, t[1:], strict=False)]
    return {"images": sz.fid_images, "fid": value, "load_s": d[0], "real_features_s": d[1], "generate_s": d[2],
            "fake_features_s": d[3], "frechet_s": d[4], "total_s": t[-1] - t[0],
            "feature_images_per_s": 2 * sz.fid_images / (d[1] + d[3]), "tf32": False}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer(Callbacks):
    """Stops the loop after `seconds` of steady training; keeps (time, step) of each flush."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.marks = seconds, []

    def on_metrics(self, rows: list) -> None:
        if rows:
            self.marks.append((time.time(), rows[-1][0]))
            if self.marks[-1][0] - self.marks[0][0] >= self.seconds:
                raise StopTraining("time")


def trial_worker(args: argparse.Namespace) -> None:
    """One 'trial': gan.train on its own process for a fixed time; prints a JSON line."""
    sz = SMOKE if args.smoke else FULL
    device = torch.device(args.device)
    cfg = make_config({"arch": "dcgan", "dcgan_width": sz.width, "batch_size": sz.batch, "epochs": 10_000,
                       "log_every": 10, "device": device.type, "amp": True})
    timer = _Timer(sz.trial_seconds)
    from gan.train import train

    train(cfg, synthetic_cifar(sz.images), timer)
    (t0, s0), (t1, s1) = timer.marks[0], timer.marks[-1]
    print(json.dumps({"startup_s": t0 - args.launched, "images_per_s": (s1 - s0) * sz.batch / max(t1 - t0, 1e-9)}))


def trials(sz: Sizes, device: torch.device, budget: Budget, smoke: bool) -> dict[str, Any]:
    """1, 2, 4 trial processes at once on the one device: trials per hour at trial_kimg each
    (a process's startup, from launch to its first 10 steps, is counted in its trial time)."""
    out: dict[str, Any] = {"trial_kimg": sz.trial_kimg}
    one_hour_1 = None
    for n in sz.concurrency:
        def run(n: int = n) -> dict[str, Any]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--trial-worker", "--device", str(device),
                   "--launched", str(time.time())] + (["--smoke"] if smoke else [])
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
            rows = []
            try:
                for p in procs:
                    stdout, _ = p.communicate(timeout=sz.trial_seconds + 120)
                    if p.returncode:
                        raise RuntimeError(f"trial process exited {p.returncode}")
                    rows.append(json.loads(stdout.strip().splitlines()[-1]))
            finally:  # a hung or failed trial must not outlive the benchmark
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            per_hour = sum(3600 / (r["startup_s"] + sz.trial_kimg * 1000 / r["images_per_s"]) for r in rows)
            total = sum(r["images_per_s"] for r in rows)
            return {"processes": rows, "images_per_s": total, "trials_per_hour": per_hour}

        res = out[f"{n} concurrent"] = attempt(budget, sz.trial_seconds + 30, run)
        if res["status"] == "ok":
            one_hour_1 = one_hour_1 or res["trials_per_hour"]
            res["vs_1"] = res["trials_per_hour"] / one_hour_1
        print(f"trials {n} concurrent: {res}", flush=True)
    return out


def _num(r: dict[str, Any], key: str, spec: str, unit: str = "") -> str:
    return format(r[key], spec) + unit if key in r else "-"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU benchmark ({report['device']}, {report['date']})", "", f"`{report['command']}`", "",
             "| training variant | images/s | vs tutorial | status |", "|---|---|---|---|"]
    for name, r in report.get("training", {}).items():  # sections not run yet are absent
        lines.append(f"| {name} | {_num(r, 'images_per_s', '.0f')} | {_num(r, 'vs_tutorial', '.2f', 'x')}"
                     f" | {r['status']} {r.get('error', r.get('reason', ''))} |")
    f = report.get("fid", {"status": "not run"})
    lines += ["", f"FID ({f.get('images')} vs {f.get('images')} images): {f.get('fid', 'n/a')}, total "
              f"{_num(f, 'total_s', '.1f')} s ({f['status']} {f.get('error', f.get('reason', ''))})", "",
              "| trials at once | trials/hour | images/s (all) | vs 1 | status |", "|---|---|---|---|---|"]
    for name, r in report.get("trials", {}).items():
        if isinstance(r, dict):
            lines.append(f"| {name} | {_num(r, 'trials_per_hour', '.1f')} | {_num(r, 'images_per_s', '.0f')} | "
                         f"{_num(r, 'vs_1', '.2f', 'x')} | {r['status']} {r.get('error', r.get('reason', ''))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, seconds")
    ap.add_argument("--out", default="benchmarks/gpu_results", help="writes OUT.json and OUT.md")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--budget-s", type=float, default=None, help="whole-run time limit")
    ap.add_argument("--loader-workers", type=int, default=None, help="tutorial DataLoader workers")
    ap.add_argument("--trial-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--launched", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    args.device = str(device)
    if args.trial_worker:
        return trial_worker(args)
    sz = SMOKE if args.smoke else FULL
    budget = Budget(args.budget_s or sz.budget_s)
    workers = args.loader_workers if args.loader_workers is not None else (0 if args.smoke else 4)
    report: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "torch": torch.__version__, "smoke": args.smoke, "sizes": asdict(sz), "loader_workers": workers,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section: a run killed at the time limit still leaves its numbers
        report["seconds"] = (args.budget_s or sz.budget_s) - budget.left()
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=1))
        Path(f"{args.out}.md").write_text(markdown(report))

    report["training"] = training(sz, device, budget, workers)
    save()
    report["fid"] = attempt(budget, 20 if args.smoke else 90, fid, sz, device)
    print(f"fid    {report['fid']}", flush=True)
    save()
    report["trials"] = trials(sz, device, budget, args.smoke)
    save()
    print(f"wrote {args.out}.json and {args.out}.md ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
