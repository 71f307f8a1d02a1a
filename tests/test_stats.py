"""DeviceMeans: the means it reports, what it leaves out, and that batching values changes none."""

import math

import pytest
import torch

from mtrl.stats import DeviceMeans, PendingRows


def test_means_of_scalars_and_labelled_vectors():
    means = DeviceMeans()
    for step in range(3):
        means.add("loss", torch.tensor(float(step)))
        means.add("weight", torch.tensor([1.0, 2.0 * step]), labels=["a", "b"])
    assert means.pop() == {"loss": 1.0, "weight/a": 1.0, "weight/b": 2.0}
    assert means.pop() == {}


def test_left_out_values_count_for_nothing_even_when_not_finite():
    means = DeviceMeans()
    means.add("loss", torch.tensor(2.0), weight=torch.tensor(True))
    means.add("loss", torch.tensor(math.nan), weight=torch.tensor(False))
    means.add("loss", torch.tensor(math.inf), weight=torch.tensor(0.0))
    means.add("never", torch.tensor(math.nan), weight=torch.tensor(False))
    assert means.pop() == {"loss": 2.0}


def test_pending_rows_hand_back_what_was_appended_in_buffers_allocated_once():
    rows = PendingRows(3)
    appended = [(torch.full((2, 2), float(i)), torch.tensor(i % 2 == 0)) for i in range(5)]
    assert [rows.append(*update) for update in appended[:3]] == [False, False, True]
    buffers = [buffer.data_ptr() for buffer in rows.take()]
    for update in appended[3:]:
        rows.append(*update)
    grams, flags = rows.take()
    assert [grams.data_ptr(), flags.data_ptr()] == buffers  # the same memory, refilled
    torch.testing.assert_close(grams, torch.stack([appended[3][0], appended[4][0]]))
    assert flags.tolist() == [False, True]
    assert [len(part) for part in rows.take()] == [0, 0]


def test_a_batch_adds_what_its_values_add_one_by_one():
    values = torch.tensor([[1.0, 2.0], [math.nan, 0.0], [3.0, 6.0]])
    kept = torch.tensor([True, False, True])
    one_by_one, together = DeviceMeans(), DeviceMeans()
    for value, keep in zip(values, kept, strict=True):
        one_by_one.add("w", value, labels=["a", "b"], weight=keep)
    together.add_batch("w", values, labels=["a", "b"], weights=kept)
    assert together.pop() == one_by_one.pop() == {"w/a": 2.0, "w/b": 4.0}


def test_a_label_count_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="2 labels for a value of shape"):
        DeviceMeans().add("weight", torch.zeros(3), labels=["a", "b"])
