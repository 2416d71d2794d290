"""Study poolings against independent references: segment operations, no padding or neighbouring study moving a
study's score, view order not mattering, max = max of the view logits, attention weights summing to 1, noisy-or and
log-sum-exp by their formulas, and a MIL toy where only attention finds the one view that shows the lesion."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mura_lightning.errors import MuraError
from mura_lightning.models.module import MURAClassifier
from mura_lightning.models.pooling import (
    POOLINGS,
    LogitPooling,
    ViewOutputs,
    build_pooling,
    log_expm1,
)
from mura_lightning.models.segments import OneStudy, Segments

DIM = 6
STUDY_POOLINGS = [name for name in POOLINGS if name not in ("mean_prob", "max_prob")]
TOLERANCE = 1e-6


def pooling(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_pooling(name, DIM).eval().requires_grad_(False)


def random_views(count: int, seed: int) -> ViewOutputs:
    generator = torch.Generator().manual_seed(seed)
    return ViewOutputs(torch.randn(count, generator=generator) * 3, torch.randn(count, DIM, generator=generator))


def concat(*parts: ViewOutputs) -> ViewOutputs:
    return ViewOutputs(torch.cat([p.logits for p in parts]), torch.cat([p.embeddings for p in parts]))


def test_segment_reductions_equal_per_study_loops():
    studies = torch.tensor([5, 2, 5, 9, 2, 5])
    values = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.0])
    segments, ids = Segments.of(studies)
    assert ids.tolist() == [2, 5, 9]
    for i, study in enumerate(ids.tolist()):
        mine = values[studies == study]
        assert segments.sum(values)[i] == pytest.approx(float(mine.sum()))
        assert segments.max(values)[i] == pytest.approx(float(mine.max()))
        assert segments.min(torch.arange(6))[i] == int(torch.nonzero(studies == study)[0])
        softmax = segments.softmax(values)[studies == study]
        torch.testing.assert_close(softmax, torch.softmax(mine, 0))
    one = OneStudy()
    torch.testing.assert_close(one.softmax(values), torch.softmax(values, 0))
    assert float(one.sum(values)) == pytest.approx(float(values.sum()))


@pytest.mark.parametrize("name", list(POOLINGS))
def test_other_studies_in_the_batch_never_move_a_studys_score(name):
    """No padding at all: a study scored alone (as the exported model scores it) and amid other studies of any
    size gets the same probability and weights."""
    pool = pooling(name)
    study = random_views(3, seed=1)
    alone = pool.score(study, OneStudy())
    neighbours = [random_views(count, seed=10 + count) for count in (1, 5, 2)]
    batch = concat(neighbours[0], study, neighbours[1], neighbours[2])
    segments, _ = Segments.of(torch.tensor([0] + [1] * 3 + [2] * 5 + [3] * 2))
    together = pool.score(batch, segments)
    assert float(together.study_probs[1]) == pytest.approx(float(alone.study_probs[0]), abs=TOLERANCE)
    torch.testing.assert_close(together.weights[1:4], alone.weights, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(together.view_probs[1:4], alone.view_probs, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", list(POOLINGS))
def test_a_studys_score_does_not_depend_on_the_order_of_its_views(name):
    pool = pooling(name)
    views = random_views(5, seed=2)
    order = torch.tensor([3, 0, 4, 1, 2])
    shuffled = ViewOutputs(views.logits[order], views.embeddings[order])
    before, after = pool.score(views, OneStudy()), pool.score(shuffled, OneStudy())
    assert float(after.study_probs[0]) == pytest.approx(float(before.study_probs[0]), abs=TOLERANCE)
    torch.testing.assert_close(after.weights, before.weights[order], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", list(POOLINGS))
def test_weights_are_a_distribution_over_each_studys_views(name):
    pool = pooling(name)
    segments, _ = Segments.of(torch.tensor([0, 0, 0, 1, 2, 2, 2, 2]))
    weights = pool.score(random_views(8, seed=3), segments).weights
    assert (weights >= 0).all()
    torch.testing.assert_close(segments.sum(weights), torch.ones(3), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", list(POOLINGS))
def test_a_one_view_study_scores_as_its_view(name):
    """Each view's own probability (what image metrics use) is that of a study of that one view."""
    pool = pooling(name)
    views = random_views(4, seed=4)
    segments, _ = Segments.of(torch.arange(4))
    scores = pool.score(views, segments, temperature=1.7)
    torch.testing.assert_close(scores.study_probs, scores.view_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.view_probs, torch.sigmoid(views.logits / 1.7))


def test_max_pooling_is_the_max_of_the_view_logits():
    views = random_views(7, seed=5)
    segments, _ = Segments.of(torch.tensor([0, 1, 1, 0, 2, 1, 2]))
    logits, weights = pooling("max")(views, segments)
    for study in range(3):
        mine = views.logits[segments.index == study]
        assert float(logits[study]) == float(mine.max())
        assert float(weights[segments.index == study][mine.argmax()]) == 1.0


@pytest.mark.parametrize("name", ["attention", "gated_attention"])
def test_attention_is_a_softmax_of_its_scores_and_pools_the_view_logits(name):
    pool = pooling(name)
    views = random_views(6, seed=6)
    segments, _ = Segments.of(torch.tensor([0, 0, 1, 1, 1, 0]))
    logits, weights = pool(views, segments)
    scores = pool.attention_scores(views.embeddings)
    head = torch.nn.Linear(DIM, 1).requires_grad_(False)
    for study in range(2):
        rows = segments.index == study
        expected = torch.softmax(scores[rows], 0)
        torch.testing.assert_close(weights[rows], expected)
        assert float(weights[rows].sum()) == pytest.approx(1.0, abs=TOLERANCE)
        assert float(logits[study]) == pytest.approx(float((expected * views.logits[rows]).sum()), abs=1e-5)
        # a linear head on sum_k a_k h_k is the attention-weighted mean of the head's view logits
        pooled = head((expected[:, None] * views.embeddings[rows]).sum(0))
        view_logits = head(views.embeddings[rows]).squeeze(1)
        assert float(pooled) == pytest.approx(float((expected * view_logits).sum()), abs=1e-5)


def test_noisy_or_and_lse_follow_their_formulas():
    views = random_views(4, seed=7)
    probs = torch.sigmoid(views.logits.double())
    noisy_or = pooling("noisy_or").score(views, OneStudy())
    assert float(noisy_or.study_probs[0]) == pytest.approx(float(1 - torch.prod(1 - probs)), abs=1e-6)
    logits = views.logits.double().numpy()
    for temperature in (0.1, 1.0, 10.0):
        lse = build_pooling("lse", DIM, temperature=temperature)
        expected = temperature * np.log(np.mean(np.exp(logits / temperature)))
        assert float(lse(views, OneStudy())[0][0]) == pytest.approx(expected, abs=1e-5)
    near_max = build_pooling("lse", DIM, temperature=1e-3)(views, OneStudy())[0]
    assert float(near_max[0]) == pytest.approx(float(views.logits.max()), abs=1e-2)


def test_log_expm1_is_accurate_from_tiny_to_large_values():
    values = np.array([1e-12, 1e-6, 1e-3, 0.0499, 0.0501, 0.3, 2.0, 40.0])
    expected = np.log(np.expm1(values))
    got = log_expm1(torch.tensor(values, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_noisy_or_stays_finite_with_very_normal_views():
    views = ViewOutputs(torch.tensor([-120.0, -90.0], requires_grad=True))
    logits, weights = pooling("noisy_or")(views, OneStudy())
    logits.sum().backward()
    assert torch.isfinite(logits).all() and torch.isfinite(weights).all() and torch.isfinite(views.logits.grad).all()


def test_mil_toy_attention_finds_the_one_view_that_shows_the_lesion():
    """Bags of 2 to 4 views; an abnormal bag has a signal in one view only (a partial-view lesion). Attention
    pooling learns to weigh that view; an image classifier trained on the bag's label copied to every view and
    averaged (mean_prob) ranks the bags worse."""
    rng = np.random.default_rng(0)
    embeddings, studies, labels, lesion = [], [], [], []
    for study in range(200):
        label, views = study % 2, int(rng.integers(2, 5))
        features = rng.normal(size=(views, DIM))
        shows = np.zeros(views, dtype=bool)
        if label:
            shows[rng.integers(views)] = True
            features[shows, 0] += 2.5
        embeddings.append(features)
        studies += [study] * views
        labels.append(label)
        lesion.append(shows)
    h = torch.tensor(np.concatenate(embeddings), dtype=torch.float32)
    segments, _ = Segments.of(torch.tensor(studies))
    targets, shown = torch.tensor(labels, dtype=torch.float32), np.concatenate(lesion)

    def fit(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        pool, head = (
            build_pooling(name, DIM, **({"hidden": 16} if "attention" in name else {})),
            torch.nn.Linear(DIM, 1),
        )
        optimizer = torch.optim.Adam([*pool.parameters(), *head.parameters()], lr=0.05)
        for _ in range(100):
            views = ViewOutputs(head(h).squeeze(1), h)
            if isinstance(pool, LogitPooling):
                study_logits, _ = pool(views, segments)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(study_logits, targets)
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(views.logits, segments.spread(targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            scores = pool.score(ViewOutputs(head(h).squeeze(1), h), segments)
        return scores.study_probs, scores.weights

    attention_probs, attention_weights = fit("attention")
    mean_probs, _ = fit("mean_prob")
    attention_auc, mean_auc = roc_auc_score(labels, attention_probs), roc_auc_score(labels, mean_probs)
    assert attention_auc > 0.95 and attention_auc > mean_auc + 0.03, (attention_auc, mean_auc)
    abnormal_views = np.repeat(np.array(labels), segments.sum(torch.ones(len(h))).long().numpy()).astype(bool)
    on_lesion = attention_weights.numpy()[shown].mean()
    elsewhere = attention_weights.numpy()[abnormal_views & ~shown].mean()
    assert on_lesion > 0.6 > elsewhere, (on_lesion, elsewhere)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("median", {}, "model.pooling.name='median' is not a pooling: choose one of mean_prob, max_prob, max"),
        ("max", {"hidden": 4}, "pooling=max has no option hidden: it takes no options"),
        ("lse", {"width": 2}, "pooling=lse has no option width: its options are temperature"),
        ("lse", {"temperature": 0}, r"model.pooling.temperature=0 must be a positive number"),
        ("attention", {"hidden": 0}, r"model.pooling.hidden=0 must be a whole number of units"),
    ],
)
def test_bad_poolings_are_clear_errors(name, options, message):
    with pytest.raises(MuraError, match=message):
        build_pooling(name, DIM, **options)


def classifier(**pooling) -> MURAClassifier:
    preprocessing = {"image_size": 32, "mean": [0.5], "std": [0.25], "in_chans": 1}
    return MURAClassifier(
        backbone={"name": "resnet50", "pretrained": False}, preprocessing=preprocessing, pooling=pooling
    )


def test_an_image_loss_weight_is_for_study_poolings_only():
    with pytest.raises(MuraError, match="image_loss_weight applies to study poolings; pooling=mean_prob trains on"):
        classifier(name="mean_prob", image_loss_weight=0.5)
    with pytest.raises(MuraError, match=r"image_loss_weight=-1.0 must be a number >= 0"):
        classifier(name="attention", image_loss_weight=-1)


def test_attention_models_keep_their_head_apart_and_pool_view_logits():
    model = classifier(name="attention", hidden=8).eval()
    assert model.head is not None and model.pools_studies
    images = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        views = model.view_outputs(images)
        assert views.embeddings.shape == (5, model.head.in_features)
        torch.testing.assert_close(views.logits, model.head(model.net(images)).squeeze(1))
        pooled = model.pool(
            {
                "image": images,
                "study": torch.tensor([3, 3, 8, 3, 8]),
                "label": torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]),
                "body_part": torch.zeros(5, dtype=torch.long),
            }
        )
    assert pooled.study_logits.shape == (2,) and pooled.labels.tolist() == [1.0, 0.0]
    assert "net.classifier.weight" not in model.state_dict() and "head.weight" in model.state_dict()


def test_the_segments_docstring_example_runs():
    (example,) = re.findall(r"```python\n(.*?)```", textwrap.dedent(Segments.__doc__.split("Example:")[1]), re.S)
    namespace: dict = {}
    exec(example.replace("segments.sum(", "result = segments.sum("), namespace)
    assert namespace["result"].tolist() == [2.0, 4.0] and namespace["ids"].tolist() == [3, 7]
