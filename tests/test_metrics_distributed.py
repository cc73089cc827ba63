"""Evaluation under a real 2-process gloo group: padding-free gathers, equal scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gan.data import ImageData
from gan.metrics import Evaluator
from gan.metrics.distributed import gather_rows

WORLD, NUM_SAMPLES, LATENT = 2, 25, 4  # 25 over 2 ranks: 13 + 12, so padding is exercised


def tiny_dataset() -> ImageData:
    """200 labelled 8x8 images: dark (class 0) and bright (class 1) noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    images = (torch.rand(200, 1, 8, 8, generator=g) * 128 + labels.view(-1, 1, 1, 1) * 127).round()
    return ImageData("tiny", images.to(torch.uint8), labels)


def tiny_generator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(LATENT, 64), nn.Tanh(), nn.Unflatten(1, (1, 8, 8))).eval()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share the machine's cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = torch.arange(3 - rank, dtype=torch.float32).view(-1, 1) + 10 * rank
        gathered = gather_rows(rows.repeat(1, 2))
        # both ranks construct: the file lock lets one train while the other waits
        evaluator = Evaluator(tiny_dataset(), num_samples=NUM_SAMPLES, cache_dir=out_dir)
        scores = evaluator(tiny_generator(), LATENT)
        result = {"gathered": gathered[:, 0].tolist(), "scores": scores}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_gather_rows_concatenates_ranks_in_order_without_padding(ranks):
    _, results = ranks
    for result in results:
        assert result["gathered"] == [0.0, 1.0, 2.0, 10.0, 11.0]


def test_every_rank_returns_the_scores_of_exactly_the_generated_samples(ranks):
    cache, results = ranks
    assert results[0]["scores"] == results[1]["scores"]
    # The same generator scored in one process: the ranks' 13 + 12 images are exactly the
    # 25 one process scores (any padded duplicate or rank-dependent latent would differ).
    single = Evaluator(tiny_dataset(), num_samples=NUM_SAMPLES, cache_dir=str(cache))
    expected = single(tiny_generator(), LATENT)
    assert results[0]["scores"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
