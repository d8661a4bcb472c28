"""MeCo metadata prefixes, stage-1 layout and loss mask, splitting, the cooldown switch (meco.md)."""

import pickle

import numpy as np
import pytest

from t5x_like.config import ConfigError, ObjectiveConfig
from t5x_like.objectives.metadata import (
    PrefixTokenizer, cooldown_step, metadata_value, piece_example, piece_length, prefix_text,
    split_with_prefix, url_domain,
)

BOS, EOS = 3, 1


class FakeTokenizer:
    """One id per character (ord + 1000), so ids are distinct from BOS/EOS and easy to read."""

    bos_id, eos_id = BOS, EOS

    def __init__(self):
        self.calls = 0

    def encode(self, text):
        self.calls += 1
        return [1000 + ord(c) for c in text]


def decode(ids):
    return "".join(chr(i - 1000) for i in ids)


# ---------------------------------------------------------------- metadata values

DOMAIN_CASES = [
    ("https://en.wikipedia.org/wiki/X", "en.wikipedia.org"),
    ("http://www.example.com", "www.example.com"),
    ("en.wikipedia.org/wiki/X", "en.wikipedia.org"),
    ("//cdn.example.org/a/b.js", "cdn.example.org"),
    ("https://www.example.com:8443/path?q=1#frag", "www.example.com"),
    ("example.com:8080/x", "example.com"),
    ("example.com?q=a/b", "example.com"),
    ("example.com#top", "example.com"),
    ("HTTPS://WWW.Example.COM/Some/Path", "www.example.com"),
    ("  https://example.com/  \n", "example.com"),
    ("https://user:pw@news.example.co.uk:80/a", "news.example.co.uk"),
    ("ftp://example.com.", "example.com"),
    ("http://192.168.0.1:8080/index.html", "192.168.0.1"),
    ("http://[2001:DB8::1]:8080/x", "[2001:db8::1]"),
    ("https://bücher.de/x", "bücher.de"),
    ("", None),
    ("   ", None),
    ("unknown", None),
    ("N/A", None),
    ("not a url", None),
    ("http://", None),
    ("http:///path", None),
    ("/relative/path.html", None),
    ("mailto:someone", None),
    ("javascript:void(0)", None),
    ("someone@example.com", None),
    ("http://exa mple.com/", None),
    ("http://.com", None),
    ("http://a..b/", None),
    ("http://[::1", None),
]


@pytest.mark.parametrize("url,want", DOMAIN_CASES)
def test_domain_extraction(url, want):
    assert url_domain(url) == want
    assert metadata_value({"url": url}, "url", "domain") == want


def test_metadata_value_kinds_and_missing():
    md = {"url": "https://en.wikipedia.org/wiki/X", "topic": " Science ", "n": 7, "f": 0.5,
          "b": True, "nan": float("nan"), "np": np.int64(3), "list": ["a"], "d": {"a": 1},
          "none": None, "empty": "  ", "bytes": b"https://ex.org/x", "bad": b"\xff"}
    assert metadata_value(md, "url", "url") == "https://en.wikipedia.org/wiki/X"
    assert metadata_value(md, "topic", "value") == "Science"
    assert [metadata_value(md, k, "value") for k in ("n", "f", "b", "np")] == ["7", "0.5", "True", "3"]
    for k in ("nan", "list", "d", "none", "empty", "absent", "bad"):
        assert metadata_value(md, k, "value") is None, k
    assert metadata_value(md, "bytes", "domain") == "ex.org"
    assert metadata_value(md, "n", "url") is None and metadata_value(md, "n", "domain") is None
    assert metadata_value(None, "url", "domain") is None and metadata_value({}, "url", "url") is None
    with pytest.raises(ValueError, match="kind"):
        metadata_value(md, "url", "host")


# ---------------------------------------------------------------- spec and prefixes


_SPEC_KEYS = {"field": "metadata_field", "kind": "metadata_kind", "template": "metadata_template",
              "missing": "missing_metadata", "placeholder": "metadata_placeholder",
              "continuation": "metadata_continuation"}


def _spec(**kw):
    """The MeCo fields of an ObjectiveConfig, by short names."""
    return ObjectiveConfig(**{_SPEC_KEYS[k]: v for k, v in ({"field": "url"} | kw).items()})


def meco_example(doc_ids, prefix_ids, bos_id, eos_id):
    """The whole stage-1 example ``[BOS] prefix doc [EOS]``: one prefixed piece."""
    return piece_example(doc_ids, prefix_ids, (0, len(doc_ids), True), bos_id, eos_id)


def _prefix_text(metadata, spec):
    return prefix_text(metadata_value(metadata, spec.metadata_field, spec.metadata_kind), spec)


@pytest.mark.parametrize("template", ["URL: value\n\n", "URL: {val}\n\n", "{value} {other}",
                                      "{value} {", "{value} {0}"])
def test_template_validation(template):
    with pytest.raises(ConfigError, match="metadata_template"):
        _spec(template=template)


def test_spec_validation():
    for kw in ({"kind": "host"}, {"missing": "drop"}, {"continuation": "mask"},
               {"placeholder": " "}):
        with pytest.raises(ConfigError, match="choose one of|non-blank"):
            _spec(**kw)
    _spec(missing="skip", placeholder="")  # no placeholder needed when skipping
    assert _spec(template="{{x}} {value}").metadata_template.format(value="v") == "{x} v"


def test_prefix_text():
    spec = _spec()
    assert _prefix_text({"url": "https://en.wikipedia.org/wiki/X"}, spec) == "URL: en.wikipedia.org\n\n"
    assert _prefix_text({}, spec) == "URL: unknown\n\n"
    assert _prefix_text({"url": "garbage"}, spec) == "URL: unknown\n\n"
    assert _prefix_text({}, _spec(missing="skip")) is None
    topic = _spec(field="topic", kind="value", template="Topic: {value}\n\n")
    assert _prefix_text({"topic": "Biology"}, topic) == "Topic: Biology\n\n"


@pytest.mark.parametrize("missing", ["placeholder", "skip"])
def test_prefix_tokenizer_counts_and_cache(missing):
    tok = FakeTokenizer()
    pt = PrefixTokenizer(tok, _spec(missing=missing))
    docs = [{"url": "https://a.org/1"}, {"url": "http://a.org/2"}, {}, {"url": "junk"},
            {"url": "https://b.org"}, None]
    got = [pt.ids(md) for md in docs]
    assert decode(got[0]) == decode(got[1]) == "URL: a.org\n\n"
    assert got[0] is got[1]  # cached by prefix text
    assert all(g.dtype == np.int32 and not g.flags.writeable for g in got)
    if missing == "placeholder":
        assert all(decode(got[i]) == "URL: unknown\n\n" for i in (2, 3, 5))
        assert tok.calls == 3  # a.org, unknown, b.org
    else:
        assert all(got[i].size == 0 for i in (2, 3, 5))
        assert tok.calls == 2
    pt.ids(docs[2], count=False)
    s = pt.stats()
    assert s["documents"] == 6 and s["with_metadata"] == 3 and s["without_metadata"] == 3
    assert (s["placeholder"], s["no_prefix"]) == ((3, 0) if missing == "placeholder" else (0, 3))
    assert s["prefix_tokens"] == sum(g.size for g in got)
    clone = pickle.loads(pickle.dumps(pt))
    assert clone.stats() == s and decode(clone.ids(docs[4])) == "URL: b.org\n\n"


def test_prefix_tokenizer_cache_is_bounded():
    tok = FakeTokenizer()
    pt = PrefixTokenizer(tok, _spec(kind="url"), cache_size=2)
    for i in range(5):
        pt.ids({"url": f"https://x.org/{i}"})
    pt.ids({"url": "https://x.org/4"})
    assert pt.stats()["distinct_cached"] == 2 and tok.calls == 5


# ---------------------------------------------------------------- stage-1 layout


def test_stage1_layout_and_loss_mask():
    tok = FakeTokenizer()
    prefix = PrefixTokenizer(tok, _spec()).ids({"url": "https://en.wikipedia.org/wiki/X"})
    assert decode(prefix) == "URL: en.wikipedia.org\n\n"
    doc = np.array([7, 8, 9, 10], np.int32)
    inputs, targets, weights = meco_example(doc, prefix, BOS, EOS)
    p = prefix.size
    seq = np.concatenate([[BOS], prefix, doc, [EOS]])
    np.testing.assert_array_equal(inputs, seq[:-1])
    np.testing.assert_array_equal(targets, seq[1:])
    np.testing.assert_array_equal(weights, [0] * p + [1] * (doc.size + 1))
    assert weights[p - 1] == 0 and targets[p - 1] == prefix[-1]  # last prefix token: no loss
    assert weights[p] == 1 and targets[p] == doc[0]  # first doc token, target of the last prefix
    assert inputs.dtype == targets.dtype == weights.dtype == np.int32
    # No prefix: CausalLMRows' example; no BOS: the first prefix token is an input only.
    _, t, w = meco_example(doc, [], BOS, EOS)
    np.testing.assert_array_equal(t, [*doc, EOS])
    np.testing.assert_array_equal(w, [1] * 5)
    i, t, w = meco_example(doc, prefix, -1, EOS)
    np.testing.assert_array_equal(i, np.concatenate([prefix, doc]))
    np.testing.assert_array_equal(w, [0] * (p - 1) + [1] * (doc.size + 1))


def test_all_prefix_row_never_weights_a_prefix_token():
    prefix = np.array([50, 51, 52], np.int32)
    # Empty document: only EOS is trained.
    _, t, w = meco_example([], prefix, BOS, EOS)
    np.testing.assert_array_equal(t, [50, 51, 52, EOS])
    np.testing.assert_array_equal(w, [0, 0, 0, 1])
    # Document tokens equal to prefix ids: weights follow positions, not ids.
    _, t, w = meco_example(prefix, prefix, BOS, EOS)
    np.testing.assert_array_equal(w, [0, 0, 0, 1, 1, 1, 1])
    for bos in (BOS, -1):
        for n in range(4):
            for piece in split_with_prefix(n, 3, 5, "repeat", bos=bos >= 0):
                _, t, w = piece_example(np.arange(100, 100 + n), prefix, piece, bos, EOS)
                assert w.sum() >= 1 and not np.any(w[np.isin(t, prefix)])


@pytest.mark.parametrize("continuation", ["repeat", "first_only"])
@pytest.mark.parametrize("bos", [True, False])
def test_split_conserves_tokens_and_fits(continuation, bos):
    bos_id = BOS if bos else -1
    for prefix_len in (0, 1, 3):
        prefix = np.arange(50, 50 + prefix_len, dtype=np.int32)
        for length in range(max(2, prefix_len + 2), 12):
            for n in range(0, 30):
                doc = np.arange(100, 100 + n, dtype=np.int32)
                pieces = split_with_prefix(n, prefix_len, length, continuation, bos=bos)
                text, trained = [], []
                for k, piece in enumerate(pieces):
                    start, size, has_prefix = piece
                    assert has_prefix == (prefix_len > 0 and (k == 0 or continuation == "repeat"))
                    assert start == sum(p[1] for p in pieces[:k])
                    i, t, w = piece_example(doc, prefix, piece, bos_id, EOS)
                    assert 1 <= i.size == piece_length(piece, n, prefix_len, bos=bos) <= length
                    assert w.sum() >= 1 and not np.any(w[np.isin(t, prefix)])
                    if has_prefix:
                        np.testing.assert_array_equal(i[: bos + prefix_len],
                                                      [bos_id] * bos + list(prefix))
                        assert size >= 1 or n == 0  # a prefixed piece never holds the EOS alone
                    text += list(doc[start : start + size])
                    trained += list(t[w == 1])
                np.testing.assert_array_equal(text, doc)
                if n + bos + prefix_len == 0:
                    assert pieces == []
                    continue
                skip = 0 if (bos or prefix_len) else 1  # doc[0] is an input only, as in CausalLMRows
                assert trained == list(doc[skip:]) + [EOS]


def test_first_only_and_no_prefix_match_causal_lm_packing():
    """'first_only' continuations (and a prefix-free document) are CausalLMRows' plain split."""
    n, length, prefix = 23, 6, np.array([50, 51], np.int32)
    doc = np.arange(100, 100 + n, dtype=np.int32)
    for pre in (prefix, prefix[:0]):
        seq = np.concatenate([[BOS], pre, doc, [EOS]])
        pieces = split_with_prefix(n, pre.size, length, "first_only")
        got = [piece_example(doc, pre, p, BOS, EOS)[1] for p in pieces]
        want = [seq[1:][o : o + length] for o in range(0, seq.size - 1, length)]
        assert [list(g) for g in got] == [list(w) for w in want]
    # Where CausalLMRows would leave the EOS alone in a last piece, one token moves over to it.
    pieces = split_with_prefix(11, 0, 6, "first_only")  # 12 pairs: 6 + 6, no EOS-only piece
    assert pieces == [(0, 6, False), (6, 5, False)]
    pieces = split_with_prefix(12, 0, 6, "first_only")  # 13 pairs: 6 + 6 + 1 there, 6 + 5 + 2 here
    assert pieces == [(0, 6, False), (6, 5, False), (11, 1, False)]
    assert [piece_length(p, 12, 0) for p in pieces] == [6, 5, 2]


def test_repeat_layout():
    prefix = np.array([50, 51], np.int32)
    doc = np.arange(100, 110, dtype=np.int32)
    pieces = split_with_prefix(10, 2, 6, "repeat")
    assert pieces == [(0, 4, True), (4, 4, True), (8, 2, True)]
    i, t, w = piece_example(doc, prefix, pieces[1], BOS, EOS)  # a continuation: fresh head
    np.testing.assert_array_equal(i, [BOS, 50, 51, 104, 105, 106])
    np.testing.assert_array_equal(t, [50, 51, 104, 105, 106, 107])
    np.testing.assert_array_equal(w, [0, 0, 1, 1, 1, 1])
    i, t, w = piece_example(doc, prefix, pieces[2], BOS, EOS)
    np.testing.assert_array_equal(t, [50, 51, 108, 109, EOS])
    np.testing.assert_array_equal(w, [0, 0, 1, 1, 1])
    # 4 tokens would fill the row and leave the EOS alone for a prefixed piece: take 3, then 1.
    assert split_with_prefix(4, 2, 6, "repeat") == [(0, 3, True), (3, 1, True)]
    assert split_with_prefix(4, 2, 6, "first_only") == [(0, 3, True), (3, 1, False)]
    assert split_with_prefix(3, 2, 6, "repeat") == [(0, 3, True)]


def test_split_errors():
    with pytest.raises(ValueError, match="prefix of 5 tokens"):
        split_with_prefix(10, 5, 6)  # BOS + 5 + one token + EOS = 7 tokens > 6 pairs + 1
    split_with_prefix(10, 4, 6)  # just fits: [BOS] p p p p d -> 5 pairs, and d + EOS
    with pytest.raises(ValueError, match="continuation"):
        split_with_prefix(10, 2, 6, "mask")
    with pytest.raises(ValueError, match="length >= 2"):
        split_with_prefix(10, 0, 1)
    with pytest.raises(ValueError, match="outside"):
        piece_example(np.arange(3), [50], (2, 5, True), BOS, EOS)
    assert split_with_prefix(0, 0, 4, bos=False) == []


# ---------------------------------------------------------------- the switch


def test_cooldown_step_boundaries():
    assert cooldown_step(100, 0.9) == 90
    assert sum(s < cooldown_step(100, 0.9) for s in range(1, 101)) == 89  # steps 1..89
    assert cooldown_step(100, 0.57) == 57  # not 56 (0.57 * 100 == 56.99999999999999)
    assert cooldown_step(40_000, 0.9) == 36_000 and cooldown_step(7, 0.9) == 6
    assert cooldown_step(100, 0) == 0 and cooldown_step(100, 1) == 100
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="fraction"):
            cooldown_step(100, bad)
    with pytest.raises(ValueError, match="train_steps"):
        cooldown_step(-1, 0.9)
