"""Training throughput (images/s) of `gan-pipeline train`'s step loop vs a bare PyTorch
loop of the same model and batch size vs a tutorial-style loop (torchvision dataset +
DataLoader + ToTensor/Normalize), for mlp and dcgan on mnist-5k.

The three variants run interleaved, round after round, in one process, and the median
round is reported, so a noisy neighbour hits all three alike.

    python benchmarks/bench_train_throughput.py            # ~5 min on 2 cores
    python benchmarks/bench_train_throughput.py --rounds 5 --steps 40
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gan.callbacks import Callbacks
from gan.config import make_config
from gan.data import ImageData, load_dataset
from gan.models import build_models
from gan.train import train


class _Clock(Callbacks):
    """Times the steady state: from the first metric flush to the last."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def on_metrics(self, rows: list) -> None:
        if rows:
            self.marks.append((time.perf_counter(), rows[-1][0]))


def pipeline_loop(cfg, data: ImageData, steps: int) -> float:
    """gan.train.train itself (metric buffering included), timed between flushes."""
    n = cfg.batch_size * (steps + 1)
    sub = ImageData(data.name, data.images[:n], None if data.labels is None else data.labels[:n])
    clock = _Clock()
    train(cfg, sub, clock)
    (t0, s0), (t1, s1) = clock.marks[0], clock.marks[-1]
    return (s1 - s0) * cfg.batch_size / (t1 - t0)


def plain_step(G, D, opt_g, opt_d, real: torch.Tensor, latent_dim: int) -> None:  # noqa: N803
    """One BCE GAN step as the tutorials write it (default Adam, fakes reused for G)."""
    b = real.shape[0]
    fake = G(torch.randn(b, latent_dim, device=real.device))
    ones, zeros = torch.ones(b, device=real.device), torch.zeros(b, device=real.device)
    opt_d.zero_grad()
    d_loss = F.binary_cross_entropy_with_logits(D(real), ones) + F.binary_cross_entropy_with_logits(
        D(fake.detach()), zeros
    )
    d_loss.backward()
    opt_d.step()
    opt_g.zero_grad()
    F.binary_cross_entropy_with_logits(D(fake), ones).backward()
    opt_g.step()


def bare_loop(cfg, data: ImageData, steps: int) -> float:
    """The same models and step written plainly: data pre-normalised in one tensor."""
    torch.manual_seed(cfg.seed)
    G, D = build_models(cfg, data.shape)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    x_all = data.images.float() / 127.5 - 1
    b = cfg.batch_size
    perm = torch.randperm(len(x_all))
    t0 = 0.0
    for i in range(steps + 10):
        if i == 10:
            t0 = time.perf_counter()
        plain_step(G, D, opt_g, opt_d, x_all[perm[(i * b) % (len(x_all) - b) :][:b]], cfg.latent_dim)
    return steps * b / (time.perf_counter() - t0)


def tutorial_loop(cfg, root: Path, steps: int, workers: int) -> float:
    """The classic tutorial: torchvision MNIST + DataLoader + ToTensor + Normalize per sample."""
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    ds = tvd.MNIST(str(root), train=True, download=False,
                   transform=T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))]))
    return dataloader_loop(cfg, ds, (1, 28, 28), steps, workers)


def dataloader_loop(cfg, ds: torch.utils.data.Dataset, shape: tuple[int, int, int], steps: int, workers: int,
                    device: torch.device | None = None, warmup: int = 10) -> float:
    """The tutorial's loop over any (image, label) dataset: DataLoader batches copied to
    `device` (pinned when it is a GPU) and the plain step; images/s after `warmup` steps."""
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    G, D = (m.to(device) for m in build_models(cfg, shape))
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    b, done, t0 = cfg.batch_size, 0, 0.0
    while done < steps + warmup:
        for real, _ in loader:
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            plain_step(G, D, opt_g, opt_d, real.to(device, non_blocking=True), cfg.latent_dim)
            done += 1
            if done >= steps + warmup:
                break
    _sync(device)
    return steps * b / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)


def write_torchvision_mnist(data: ImageData, root: Path) -> None:
    """mnist-5k in torchvision's raw MNIST layout, so the tutorial loop reads real files."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = data.images[:, 0].numpy()
    labels = data.labels.numpy().astype(np.uint8)
    for split in ("train", "t10k"):  # torchvision checks that both splits exist
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">HBBIII", 0, 8, 3, *imgs.shape) + imgs.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">HBBI", 0, 8, 1, len(labels)) + labels.tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    data = load_dataset("mnist-5k")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    data = ImageData(data.name, data.images[perm], data.labels[perm])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        write_torchvision_mnist(data, Path(tmp))
        for arch in ("mlp", "dcgan"):
            cfg = make_config({"arch": arch, "batch_size": args.batch_size, "epochs": 1,
                               "log_every": 10, "device": "cpu"})
            results: dict[str, list[float]] = {"pipeline": [], "bare": [], "tutorial(workers=0)": [],
                                               "tutorial(workers=2)": []}
            for _ in range(args.rounds):
                results["pipeline"].append(pipeline_loop(cfg, data, args.steps))
                results["bare"].append(bare_loop(cfg, data, args.steps))
                results["tutorial(workers=0)"].append(tutorial_loop(cfg, Path(tmp), args.steps, 0))
                results["tutorial(workers=2)"].append(tutorial_loop(cfg, Path(tmp), args.steps, 2))
            med = {k: statistics.median(v) for k, v in results.items()}
            for k, v in med.items():
                print(f"{arch:6s} {k:22s} {v:8.0f} img/s   rounds: {', '.join(f'{x:.0f}' for x in results[k])}")
            tut = min(med["tutorial(workers=0)"], med["tutorial(workers=2)"])
            best_tut = max(med["tutorial(workers=0)"], med["tutorial(workers=2)"])
            print(f"{arch:6s} pipeline/bare = {med['pipeline'] / med['bare']:.2f}x   "
                  f"pipeline/tutorial = {med['pipeline'] / best_tut:.2f}x (vs its faster setting), "
                  f"{med['pipeline'] / tut:.2f}x (vs its slower)")


if __name__ == "__main__":
    main()
