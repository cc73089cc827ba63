"""The `classifier` backbone: a small CNN trained on the dataset's own labelled images.

Its 128-d penultimate layer gives FID-style features and its softmax head gives the
Inception-Score-style probabilities. Fast and offline, so it is the default on CPU.
Trained once per dataset (fingerprint + image shape + VERSION) and cached on disk.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gan.data import Dataset, to_unit_range
from gan.metrics.base import FeatureExtractor, MetricError, atomic_write, cache_root, file_lock

VERSION = "v2"  # bump when the architecture or the training recipe changes
FEATURE_DIM = 128


@dataclass(frozen=True)
class TrainBudget:
    """How the classifier is trained; a hash of it is part of the cache key."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    held_out: float = 0.1
    seed: int = 0


class SmallCNN(nn.Module):
    """Two conv blocks, a 128-d feature layer, a linear softmax head."""

    feature_scale: torch.Tensor  # a buffer (see __init__)

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # fixed 4x4 grid: one architecture for 28, 32 or 64 pixel datasets
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, FEATURE_DIM),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(FEATURE_DIM, num_classes))
        # set after training to 1 / RMS of the train features: KID's kernel (x.y/d + 1)^3
        # then sees unit-scale features instead of a scale the optimiser happened to pick
        self.register_buffer("feature_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # features are taken before the ReLU: no dead dimensions, a full-rank covariance
        feats = self.body(x)
        return feats * self.feature_scale, self.head(feats)


class ClassifierExtractor(FeatureExtractor):
    """A trained SmallCNN as a FeatureExtractor."""

    name = "classifier"
    dim = FEATURE_DIM
    batch_size = 500

    def __init__(self, net: SmallCNN, held_out_accuracy: float, tag: str) -> None:
        self.net = net.eval()
        self.held_out_accuracy = held_out_accuracy
        self.tag = tag
        self.device = next(net.parameters()).device

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = self.net(x)
        return feats, logits.softmax(dim=1)


def split_indices(n: int, held_out: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded shuffle, then (train, held-out) indices; datasets may be sorted by class."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(round(n * held_out)))
    return perm[n_held:], perm[:n_held]


@torch.no_grad()
def accuracy(net: SmallCNN, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of `net` on uint8 images."""
    net.eval()
    device = next(net.parameters()).device
    correct = 0
    for x, y in zip(images.split(batch), labels.split(batch), strict=True):
        _, logits = net(to_unit_range(x.to(device)))
        correct += int((logits.argmax(1).cpu() == y).sum())
    return correct / max(1, len(labels))


def _require_labels(data: Dataset) -> torch.Tensor:
    if data.labels is None:
        raise MetricError(
            f"backbone 'classifier' needs a labelled dataset and {data.name!r} has no labels: use --backbone inception"
        )
    return data.labels


def train_classifier(
    data: Dataset, device: torch.device | str = "cpu", budget: TrainBudget = TrainBudget()
) -> tuple[SmallCNN, float]:
    """Train a SmallCNN on the dataset's train split; return it and its held-out accuracy."""
    labels = _require_labels(data)
    device = torch.device(device)
    train_idx, held_idx = split_indices(len(data), budget.held_out, budget.seed)
    x_train = data.take(train_idx).to(device)  # streamed: its train split is read in
    y_train = labels[train_idx].to(device)
    num_classes = int(labels.max()) + 1
    # fork_rng: training must not move the caller's global RNG (the GAN's own stream)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(budget.seed)
        net = SmallCNN(data.shape[0], num_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=budget.lr)
        batch_size = min(budget.batch_size, len(train_idx))  # tiny datasets still train
        steps = budget.epochs * (len(train_idx) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=steps)
        g = torch.Generator().manual_seed(budget.seed)
        net.train()
        for _ in range(budget.epochs):
            perm = torch.randperm(len(train_idx), generator=g).to(device)
            for start in range(0, len(perm) - batch_size + 1, batch_size):
                idx = perm[start : start + batch_size]
                _, logits = net(to_unit_range(x_train[idx]))
                loss = F.cross_entropy(logits, y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    net.eval()
    with torch.no_grad():
        feats = torch.cat([net(to_unit_range(x))[0] for x in x_train.split(1000)])
        net.feature_scale.fill_(float(feats.pow(2).mean().rsqrt()))
    acc = accuracy(net, data.take(held_idx), labels[held_idx])
    return net, acc


def _cache_path(data: Dataset, root: Path, budget: TrainBudget) -> Path:
    c, h, w = data.shape
    recipe = hashlib.sha1(repr(budget).encode()).hexdigest()[:8]
    return root / f"classifier-{VERSION}-{data.fingerprint()}-{c}x{h}x{w}-{recipe}.pt"


def _weights_tag(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return f"classifier-{VERSION}-{h.hexdigest()[:12]}"


def load_classifier(
    data: Dataset,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    budget: TrainBudget = TrainBudget(),
) -> ClassifierExtractor:
    """The dataset's classifier from the disk cache, trained and cached on a miss."""
    labels = _require_labels(data)
    path = _cache_path(data, cache_root(cache_dir), budget)
    # the lock makes a concurrent trial wait for the first one's training, then load it
    with file_lock(path.with_suffix(".lock")):
        if not path.exists():
            start = time.perf_counter()
            net, acc = train_classifier(data, device, budget)
            meta = {
                "version": VERSION,
                "num_classes": int(labels.max()) + 1,
                "channels": data.shape[0],
                "held_out_accuracy": acc,
                "train_seconds": time.perf_counter() - start,
            }
            blob = {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()}, "meta": meta}
            atomic_write(path, lambda tmp: torch.save(blob, tmp))
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    net = SmallCNN(meta["channels"], meta["num_classes"])
    net.load_state_dict(blob["state_dict"])
    return ClassifierExtractor(net.to(device), meta["held_out_accuracy"], _weights_tag(blob["state_dict"]))
