"""Tests for the best-fit-decreasing packer."""

import numpy as np
import pytest

from t5x_like.data import packing


def _random_pieces(rng, n, length, key="tokens"):
    lengths = rng.integers(1, length + 1, size=n)
    # Token values encode (piece, position) so every token is unique and traceable.
    return [{key: np.arange(k, dtype=np.int32) + 1000 * (i + 1)} for i, k in enumerate(lengths)]


def _first_fit_rows(lengths, length):
    free = []
    for n in lengths:
        for j, f in enumerate(free):
            if f >= n:
                free[j] -= n
                break
        else:
            free.append(length - n)
    return len(free)


@pytest.mark.parametrize("seed", [None, 0, 3])
def test_token_conservation_and_layout(seed):
    length = 32
    pieces = _random_pieces(np.random.default_rng(1), 300, length)
    out = packing.pack_pieces(pieces, length, seed=seed)
    tokens_NxL, seg_NxL, pos_NxL = out["tokens"], out["segment_ids"], out["positions"]
    assert set(out) == {"tokens", "segment_ids", "positions"}
    assert all(v.dtype == np.int32 and v.shape == tokens_NxL.shape for v in out.values())
    assert tokens_NxL.shape[1] == length
    # Padding is exactly where segment_ids == 0, and everything is 0 there.
    pad = seg_NxL == 0
    assert not tokens_NxL[pad].any() and not pos_NxL[pad].any()
    recovered = {}
    for r in range(tokens_NxL.shape[0]):
        segs = seg_NxL[r][seg_NxL[r] > 0]
        # Segments are contiguous, numbered 1..k in order, padding only at the end.
        k = int(segs.max())
        assert (np.unique(segs) == np.arange(1, k + 1)).all()
        assert (np.diff(seg_NxL[r][: len(segs)]) >= 0).all() and not seg_NxL[r][len(segs):].any()
        for s in range(1, k + 1):
            mask = seg_NxL[r] == s
            assert (pos_NxL[r][mask] == np.arange(mask.sum())).all()
            toks = tokens_NxL[r][mask]
            recovered[int(toks[0]) // 1000 - 1] = toks
    # Every piece appears exactly once, intact and in order.
    assert len(recovered) == len(pieces)
    for i, piece in enumerate(pieces):
        np.testing.assert_array_equal(recovered[i], piece["tokens"])


def test_multiple_keys_stay_aligned():
    pieces = [{"a": np.arange(n) + 1, "b": -(np.arange(n) + 1)} for n in (5, 3, 8, 1)]
    out = packing.pack_pieces(pieces, 8, seed=None)
    np.testing.assert_array_equal(out["a"], -out["b"])
    assert out["a"].shape == (3, 8)  # 8 | 5+3 | 1


def test_seed_only_permutes_rows():
    pieces = _random_pieces(np.random.default_rng(2), 100, 16)
    base = packing.pack_pieces(pieces, 16, seed=None)
    shuffled = packing.pack_pieces(pieces, 16, seed=7)
    assert not np.array_equal(base["tokens"], shuffled["tokens"])
    assert sorted(map(bytes, base["tokens"])) == sorted(map(bytes, shuffled["tokens"]))
    np.testing.assert_array_equal(shuffled["tokens"], packing.pack_pieces(pieces, 16, seed=7)["tokens"])


def test_rejects_bad_pieces():
    ok = {"t": np.ones(3, np.int32)}
    with pytest.raises(ValueError, match="piece 1 has length 9"):
        packing.pack_pieces([ok, {"t": np.ones(9, np.int32)}], 8)
    with pytest.raises(ValueError, match="piece 2 has length 0"):
        packing.pack_pieces([ok, ok, {"t": np.ones(0, np.int32)}], 8)
    with pytest.raises(ValueError, match="piece 1 has keys"):
        packing.pack_pieces([ok, {"u": np.ones(3, np.int32)}], 8)
    with pytest.raises(ValueError, match="piece 0 arrays"):
        packing.pack_pieces([{"t": np.ones(3), "u": np.ones(2)}], 8)


def test_bfd_beats_first_fit_and_fills_rows():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 129, size=2000)
    row_N, _ = packing.best_fit_decreasing(lengths.tolist(), 128)
    assert row_N.max() + 1 <= _first_fit_rows(lengths, 128)
    # 5k lognormal lengths at L=256, as document lengths tend to be.
    lengths = np.clip(rng.lognormal(mean=4.0, sigma=1.0, size=5000).astype(int), 1, 256)
    out = packing.pack_pieces([{"t": np.ones(n, np.int32)} for n in lengths], 256)
    fill = lengths.sum() / out["t"].size
    assert fill > 0.97, fill


def test_split_long():
    chunks = packing.split_long(np.arange(10), 4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert packing.split_long(np.arange(0), 4) == []


def test_decoder_only_pieces_teacher_forcing():
    pieces = packing.decoder_only_pieces([10, 11, 12, 13, 14], length=3, bos_id=3, eos_id=1)
    inputs = np.concatenate([p["decoder_input_tokens"] for p in pieces])
    targets = np.concatenate([p["decoder_target_tokens"] for p in pieces])
    assert inputs.tolist() == [3, 10, 11, 12, 13, 14]
    assert targets.tolist() == [10, 11, 12, 13, 14, 1]
    assert [len(p["decoder_loss_weights"]) for p in pieces] == [3, 3]
    assert all((p["decoder_loss_weights"] == 1).all() for p in pieces)
    no_bos = packing.decoder_only_pieces([10, 11], length=8, bos_id=-1, eos_id=1)
    assert no_bos[0]["decoder_input_tokens"].tolist() == [10, 11]
    assert no_bos[0]["decoder_target_tokens"].tolist() == [11, 1]
    assert packing.decoder_only_pieces([], length=8, bos_id=-1, eos_id=1) == []
