"""``row_topk``: the block-maximum prefilter returns exactly the entries ``Tensor.topk`` does."""

from __future__ import annotations

import pytest
import torch

from probe_sae.saes.selection import row_topk


def _same_selection(scores: torch.Tensor, k: int) -> None:
    values, indices = row_topk(scores, k)
    expected = scores.topk(k, dim=1).values
    assert values.shape == indices.shape == (scores.shape[0], k)
    # the values at the returned indices are the returned values ...
    torch.testing.assert_close(scores.gather(1, indices), values, rtol=0, atol=0)
    # ... no index twice in a row, and as a multiset they are the k largest
    assert (indices.sort(dim=1).values.diff(dim=1) > 0).all()
    torch.testing.assert_close(values.sort(dim=1).values, expected.sort(dim=1).values, rtol=0, atol=0)


@pytest.mark.parametrize(("n", "c", "k"), [(64, 6144, 32), (7, 1024, 1), (33, 4096, 16), (5, 320, 5)])
def test_row_topk_equals_topk_on_random_scores(n, c, k):
    _same_selection(torch.randn(n, c, generator=torch.Generator().manual_seed(c + k)), k)


def test_row_topk_with_ties_masked_entries_and_concentrated_winners():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(20, 2048, generator=g)
    scores[:5] = scores[:5].round()  # many ties
    scores[5:10, 1000:] = float("-inf")  # AuxK-style masking
    scores[10:15, :32] += 100.0  # all winners in adjacent columns
    scores[15:, ::128] += 100.0  # all winners in one interleaved block
    for k in (1, 8, 32):
        _same_selection(scores, k)


def test_row_topk_falls_back_when_the_prefilter_cannot_help():
    scores = torch.randn(4, 100, generator=torch.Generator().manual_seed(1))  # 100 % 16 != 0
    _same_selection(scores, 10)
    scores = torch.randn(4, 512, generator=torch.Generator().manual_seed(2))  # k·16·4 > 512
    _same_selection(scores, 20)
