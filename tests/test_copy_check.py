"""The copy check (gan.metrics.copies): a generator that hands back training images is
flagged, held-out real digits and trained or random generators are not, the panel shows
each sample above its nearest training image, and the loop hands that panel on for each
new best generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gan.callbacks import Callbacks
from gan.config import make_config
from gan.metrics import Evaluator
from gan.metrics import copies as copies_module
from gan.metrics.copies import (
    REFERENCE_CAP,
    CopyingGenerator,
    TrainingReference,
    copy_scores,
    reference_subset,
    training_reference,
)
from gan.metrics.engine import clear_memory_cache, real_subset
from gan.models import build_models
from gan.train import train

SAMPLES = 200


@pytest.fixture(scope="module")
def evaluator(mnist5k, classifier_cache) -> Evaluator:
    return Evaluator(mnist5k, num_samples=SAMPLES, cache_dir=str(classifier_cache))


def unseen_by_real_subset(data, n: int) -> torch.Tensor:
    """Training images outside the real subset the FID statistics come from: a copier of
    these must be caught by the training-set reference, not by the real statistics."""
    subset = {bytes(img.numpy()) for img in real_subset(data, SAMPLES)}
    outside = [i for i in range(len(data)) if bytes(data.images[i].numpy()) not in subset]
    return data.images[outside[:n]]


def test_on_a_line_a_sample_nearer_a_training_point_than_its_neighbour_is_a_copy():
    reference = TrainingReference.of(torch.tensor([[0.0], [10.0], [30.0]]), torch.arange(3))
    assert reference.radii.tolist() == [10.0, 10.0, 20.0]
    # 1 from point 0 (radius 10), 8 from point 10 (radius 10), 0 from point 30: copies;
    # 25 from point 0 (radius 10): not one
    scores = copy_scores(reference, torch.tensor([[1.0], [18.0], [-25.0], [30.0]]))
    assert scores["copy_share"] == 0.75
    assert scores["copy_ratio"] == pytest.approx((0.1 + 0.8) / 2)  # the median of 0, 0.1, 0.8 and 2.5


def test_a_verbatim_copier_of_training_images_is_all_copies(evaluator, mnist5k):
    copier = CopyingGenerator(unseen_by_real_subset(mnist5k, 1000))
    scores = evaluator(copier, latent_dim=16)
    assert scores["copy_share"] == 1.0 and scores["copy_ratio"] < 0.01


def test_held_out_real_digits_land_that_near_about_half_the_time(evaluator):
    # the reference without 1,000 digits: those are fresh draws of the same distribution
    ref = evaluator.reference
    perm = torch.randperm(len(ref), generator=torch.Generator().manual_seed(1))
    seen, unseen = perm[:-1000], perm[-1000:]
    scores = copy_scores(TrainingReference.of(ref.feats[seen], seen), ref.feats[unseen])
    assert 0.3 < scores["copy_share"] < 0.6 and 0.8 < scores["copy_ratio"] < 1.3
    again = copy_scores(TrainingReference.of(ref.feats[seen], seen), ref.feats[seen[:1000]])
    assert again["copy_share"] == 1.0  # the same digits, once they are in the reference


def test_an_untrained_generator_copies_nothing(evaluator, mnist5k):
    torch.manual_seed(0)
    generator, _ = build_models(make_config({}), mnist5k.shape)
    scores = evaluator(generator.eval(), latent_dim=100)
    assert scores["copy_share"] < 0.05 and scores["copy_ratio"] > 1.5


def test_the_copy_check_of_saved_images_is_the_one_of_the_generator(evaluator, mnist5k):
    copier = CopyingGenerator(unseen_by_real_subset(mnist5k, 1000))
    from gan.sampling import generate_uint8, sample_latents

    images = generate_uint8(copier, sample_latents(SAMPLES, 16, evaluator.seed))
    assert evaluator.evaluate(images) == evaluator(copier, latent_dim=16)


def test_the_panel_shows_each_sample_above_its_nearest_training_image(evaluator, mnist5k):
    panel = evaluator.copy_panel(CopyingGenerator(unseen_by_real_subset(mnist5k, 1000)), latent_dim=16)
    assert panel.dtype == np.uint8 and panel.shape == (2 + 2 * 30, 2 + 16 * 30)  # 2 rows of 16, 2px borders
    top, bottom = panel[2:30], panel[32:60]
    assert top.any() and np.array_equal(top, bottom)  # a copy's nearest training image is itself

    torch.manual_seed(0)
    generator, _ = build_models(make_config({}), mnist5k.shape)
    honest = evaluator.copy_panel(generator.eval(), latent_dim=100)
    assert not np.array_equal(honest[2:30], honest[32:60])


def test_the_reference_is_kept_on_disk_and_read_back_not_recomputed(evaluator, mnist5k, tmp_path, monkeypatch):
    clear_memory_cache()
    first = training_reference(mnist5k, evaluator.extractor, str(tmp_path))
    assert len(list(tmp_path.glob(f"copyref-{mnist5k.fingerprint()}-{evaluator.extractor.tag}-n5000.npz"))) == 1
    clear_memory_cache()

    def recompute(*args: object) -> None:
        raise AssertionError("the cached reference was computed again")

    monkeypatch.setattr(copies_module, "_features", recompute)
    again = training_reference(mnist5k, evaluator.extractor, str(tmp_path))
    assert torch.equal(again.feats, first.feats) and torch.equal(again.radii, first.radii)
    assert torch.equal(again.index, torch.arange(len(mnist5k)))


def test_a_large_training_set_is_compared_through_a_fixed_capped_subset():
    assert torch.equal(reference_subset(10), torch.arange(10))
    big = reference_subset(REFERENCE_CAP + 123)
    assert len(big) == REFERENCE_CAP == len(set(big.tolist())) and torch.equal(big, big.sort().values)
    assert torch.equal(big, reference_subset(REFERENCE_CAP + 123))  # the same every time


class Panels(Callbacks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.improved: list[int] = []
        self.panels: list[np.ndarray] = []

    def on_scored(self, epoch, step, generator, improved, final):
        if improved:
            self.improved.append(step)

    def on_copies(self, epoch, step, panel):
        self.calls.append(("copies", step))
        self.panels.append(panel)

    def on_eval(self, epoch, step, grid, metrics):
        self.calls.append(("eval", step))
        assert 0 <= metrics["copy_share"] <= 1


def test_the_loop_hands_on_the_panel_of_each_new_best_generator_before_its_scores(evaluator, mnist_small):
    cfg = make_config({"dcgan_width": 8, "latent_dim": 16, "batch_size": 64, "device": "cpu", "epochs": 3,
                       "eval_samples": SAMPLES, "eval_budget": 0})
    seen = Panels()
    train(cfg, mnist_small, seen, evaluator=evaluator)
    copies = [s for kind, s in seen.calls if kind == "copies"]
    assert copies == seen.improved and copies  # one panel per improved eval, none otherwise
    for step in copies:  # each just before its eval's scores
        i = seen.calls.index(("copies", step))
        assert seen.calls[i + 1] == ("eval", step)
    assert all(p.shape == (62, 482) for p in seen.panels)
