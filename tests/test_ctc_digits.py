"""The ctc_digits task: vocabulary, WER, decoding, data, model shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.tasks import get_task
from sweeper.tasks.ctc_digits import (
    DIGITS,
    CTCRecognizer,
    Vocabulary,
    build_dataset,
    downsampled_length,
    edit_distance,
    greedy_decode,
    make_strips,
    split_sources,
    word_error_rate,
)


def test_vocabulary_round_trip_both_ways() -> None:
    tokens = [str(d) for d in range(10)]
    ids = DIGITS.encode(tokens)
    assert ids == list(range(1, 11))  # 0 is the blank
    assert DIGITS.decode(ids) == tokens
    for token in tokens:
        assert DIGITS.itos[DIGITS.stoi[token]] == token
    v = Vocabulary([])
    idx = v.add("hello")
    assert v.itos[idx] == "hello" and v.stoi["hello"] == idx  # added words are in both maps
    assert v.add("hello") == idx and len(v) == 2


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [("", "", 0), ("abc", "abc", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("12", "21", 2)],
)
def test_edit_distance(a: str, b: str, d: int) -> None:
    assert edit_distance(list(a), list(b)) == d


def test_word_error_rate() -> None:
    refs = [[1, 2, 3], [4, 5]]
    assert word_error_rate(refs, refs) == 0.0
    assert word_error_rate([[], []], refs) == 1.0
    assert word_error_rate([[1, 2, 3, 9], [4, 5]], refs) == pytest.approx(1 / 5)
    assert word_error_rate([[1, 2, 3, 9, 9, 9, 9, 9]], [[1]]) == 7.0  # insertions can exceed 1
    with pytest.raises(ValueError):
        word_error_rate([[1]], refs)


def test_greedy_decode_merges_repeats_and_drops_blanks() -> None:
    # frames: 1 1 0 1 2 2 0 | padding beyond length 7 is ignored
    path = [1, 1, 0, 1, 2, 2, 0, 3, 3]
    log_probs = torch.full((len(path), 1, 4), -10.0)
    for t, k in enumerate(path):
        log_probs[t, 0, k] = 0.0
    assert greedy_decode(log_probs, torch.tensor([7])) == [[1, 1, 2]]


def test_strips_are_deterministic_and_from_disjoint_sources() -> None:
    train_src, val_src = split_sources(0)
    assert not set(train_src) & set(val_src)
    assert len(train_src) + len(val_src) == 1797
    a_train, a_val = build_dataset.__wrapped__(0, 50, 20, 7)
    b_train, _ = build_dataset.__wrapped__(0, 50, 20, 7)
    c_train, _ = build_dataset.__wrapped__(1, 50, 20, 7)
    assert torch.equal(a_train.x, b_train.x) and a_train.labels == b_train.labels
    assert not torch.equal(a_train.x, c_train.x)
    lengths = [len(lab) for lab in a_train.labels + a_val.labels]
    assert min(lengths) >= 3 and max(lengths) <= 7
    assert all(lab and all(1 <= t <= 10 for t in lab) for lab in a_train.labels)
    # nothing is drawn past a strip's width
    for x, w in zip(a_train.x, a_train.widths, strict=True):
        assert float(x[int(w):].abs().sum()) == 0.0


def test_strip_pixels_come_from_the_real_digit_images() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    k = 17  # one source image, repeated: every placed digit must be that image, exactly
    strips = make_strips(3, source=np.array([k]), rng=np.random.default_rng(0), noise=0.0)
    image = (digits.images[k] / 16.0).astype(np.float32)
    for x, width, labels in zip(strips.x.numpy(), strips.widths.tolist(), strips.labels, strict=True):
        assert DIGITS.decode(labels) == [str(digits.target[k])] * len(labels)
        hits = sum(
            np.array_equal(x[c:c + 8, dy:dy + 8].T, image)
            for c in range(width - 7) for dy in range(3)
        )
        assert hits >= len(labels)


@pytest.mark.parametrize("downsample", [1, 2, 4, 8, 32])
def test_model_output_length_matches_downsampled_length(downsample: int) -> None:
    model = CTCRecognizer(size="tiny", downsample=downsample, dropout=0.0, n_classes=11).eval()
    x = torch.randn(3, 61, 10)
    widths = torch.tensor([61, 40, 17])
    log_probs, lengths = model(x, widths)
    assert log_probs.shape[:2] == (int(downsampled_length(torch.tensor(61), downsample)), 3)
    assert lengths.tolist() == downsampled_length(widths, downsample).tolist()
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), atol=1e-5)


def test_32x_downsampling_leaves_fewer_frames_than_digits() -> None:
    # the write-up's bug: 7 digits need >= 7 frames; 32x leaves 2 or 3
    assert int(downsampled_length(torch.tensor(7 * 8), 32)) < 7
    assert int(downsampled_length(torch.tensor(7 * 8), 4)) >= 7


def test_task_key_types_cover_defaults() -> None:
    task = get_task("ctc_digits")
    assert set(task.key_types) == set(task.defaults)
    for key, value in task.defaults.items():
        assert task.key_types[key].accepts(value), key
