"""Tests for the SentencePiece tokenizer: layout, sentinels, mode tokens, round trips, caching."""

import json
import os
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from t5x_like.data import tokenizer as tokenizer_lib

WORDS = ["alpha", "beta", "gamma", "delta", "return", "value", "index", "print", "self", "item"]


def _texts(path, n=None):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:n]


def _tiny_corpus(path, n_docs=30):
    """A small deterministic code-like JSONL corpus, enough for a ~320-piece model."""
    with open(path, "w", encoding="utf-8") as f:
        for d in range(n_docs):
            lines = [f"def {WORDS[d % 10]}_{d}(self, {WORDS[d * 3 % 10]}):"]
            lines += [f"    {WORDS[(d + k) % 10]} = {WORDS[d * k % 10]} + {k}" for k in range(6)]
            f.write(json.dumps({"text": "\n".join(lines) + f"\n\treturn {WORDS[(d + 1) % 10]}  # café\n"}) + "\n")
    return path


def _train_tiny(tmp_path, name="tiny.model", **kwargs):
    corpus = _tiny_corpus(tmp_path / "tiny.jsonl")
    return tokenizer_lib.train_tokenizer([corpus], tmp_path / name, **{"vocab_size": 320, **kwargs})


def _train_raw(tmp_path, name, **options):
    """A tiny SentencePiece model with the given trainer options (SentencePiece defaults otherwise)."""
    path = tmp_path / name
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world", "goodbye world"] * 20), model_prefix=str(path.with_suffix("")),
        vocab_size=40, model_type="bpe", minloglevel=2, num_threads=1, **options,
    )
    return path


@pytest.fixture
def t5_like_model(tmp_path):
    """Stands in for T5's spiece.model: pad 0, eos 1, unk 2, no BOS, no reserved pieces, 40 pieces."""
    return _train_raw(tmp_path, "t5.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)


# --- The default tokenizer ---------------------------------------------------------------------

def test_special_ids(stdlib_data):
    tok = stdlib_data.tokenizer
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == tok.num_pieces == 2048 and tok.extra_ids == 0
    assert tok.model_path.name == "sp2048_v2.model"


def test_default_layout(stdlib_data):
    tok = stdlib_data.tokenizer
    assert tok.encode("\n") == [4] and tok.encode("\t") == [5]
    assert tok.mode_tokens == {"[NLU]": 6, "[NLG]": 7, "[S2S]": 8}
    assert tok.mode_token_id("[S2S]") == 8
    assert tok.num_sentinels == 100
    np.testing.assert_array_equal(tok.sentinel_ids, 108 - np.arange(100))
    assert [tok.sentinel_id(i) for i in (0, 1, 99)] == [108, 107, 9]
    assert all(tok.decode([tok.sentinel_id(i)]) == f"<extra_id_{i}>" for i in range(100))
    with pytest.raises(ValueError, match="read-only"):
        tok.sentinel_ids[0] = 5


def test_reserved_tokens_are_single_ids_never_split(stdlib_data):
    tok = stdlib_data.tokenizer
    s0, s1, nlu = tok.sentinel_id(0), tok.sentinel_id(1), tok.mode_token_id("[NLU]")
    a, b = "def f(x):\n    return x", "  # done\n"
    # Literal text of a user-defined symbol maps to its id (documented behaviour).
    assert tok.encode(f"[NLU]{a}<extra_id_0>{b}<extra_id_1>") == [nlu, *tok.encode(a), s0, *tok.encode(b), s1]
    assert tok.encode("x<extra_id_57>y") == [*tok.encode("x"), tok.sentinel_id(57), *tok.encode("y")]
    assert tok.decode([nlu, *tok.encode(a), s0, *tok.encode(b), s1, 1, 0, 0]) == \
        f"[NLU]{a}<extra_id_0>{b}<extra_id_1>"
    # An index past the last sentinel is just text.
    assert tok.sentinel_id(99) not in tok.encode("<extra_id_100>")


def test_is_sentinel(stdlib_data):
    tok = stdlib_data.tokenizer
    ids = np.array([[108, 9, 8, 109], [-1, 2048, 0, 50]])
    np.testing.assert_array_equal(tok.is_sentinel(ids), [[True, True, False, False], [False, False, False, True]])
    assert tok.is_sentinel([]).shape == (0,)


def test_sentinel_exhaustion_is_an_error(stdlib_data):
    tok = stdlib_data.tokenizer
    with pytest.raises(tokenizer_lib.SentinelExhaustedError, match=r"sentinel 100 requested .* has 100 sentinels"):
        tok.sentinel_id(100)
    with pytest.raises(ValueError, match="sentinel -1 requested"):
        tok.sentinel_id(-1)


def test_unknown_mode_token_lists_available(stdlib_data):
    with pytest.raises(ValueError, match=r"no mode token '\[X\]'; available: \['\[NLG\]', '\[NLU\]', '\[S2S\]'\]"):
        stdlib_data.tokenizer.mode_token_id("[X]")


def test_roundtrip_real_stdlib_files(stdlib_data):
    tok = stdlib_data.tokenizer
    # Validation files were not in the tokenizer's training sample; the last
    # train files were not either (the sample is the first ~3 MB).
    texts = _texts(stdlib_data.paths["validation"]) + _texts(stdlib_data.paths["train"])[-40:]
    for text, ids in zip(texts, tok.encode_batch(texts)):
        assert tok.decode(ids) == text
    # Learned, not just bytes: > 2.5 bytes per token on held-out code.
    nbytes = sum(len(t.encode()) for t in texts)
    assert nbytes / sum(len(tok.encode(t)) for t in texts) > 2.5


@pytest.mark.parametrize("text", [
    "    def f(x):\n\treturn x  \n\n\n",
    "  leading spaces and trailing   ",
    "\r\nwindows\r\nlines\r\n",
    "digits 1234567890 and unicode: café ☃ 🚀 中文",
    "\x00\x01 control chars \x7f",
    "\n",
])
def test_roundtrip_edge_cases(stdlib_data, text):
    tok = stdlib_data.tokenizer
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.unk_id not in ids  # byte fallback covers everything
    assert tok.decode(ids) == text


def test_digits_are_split(stdlib_data):
    tok = stdlib_data.tokenizer
    assert len(tok.encode("1234")) == 4


def test_encode_batch_matches_encode(stdlib_data):
    tok = stdlib_data.tokenizer
    texts = _texts(stdlib_data.paths["validation"], 5)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_decode_ignores_padding_and_out_of_vocab(stdlib_data):
    tok = stdlib_data.tokenizer
    ids = tok.encode("import os\n")
    padded = [0, 0] + ids[:1] + [tok.vocab_size, tok.vocab_size + 7, -4] + ids[1:] + [0] * 5
    assert tok.decode(padded) == "import os\n"


def test_training_is_deterministic(stdlib_data, tmp_path):
    path = tokenizer_lib.train_tokenizer([stdlib_data.paths["train"]], tmp_path / "again.model")
    assert path.read_bytes() == stdlib_data.tokenizer.model_path.read_bytes()


def test_old_cache_is_retrained(stdlib_data, tmp_path, caplog):
    """A pre-sentinel model in the cache (old or current file name) is never reused."""
    src, dst = stdlib_data.paths["manifest"].parent, tmp_path / "stdlib"
    dst.mkdir()
    for name in ("train.jsonl", "validation.jsonl", "manifest.json"):
        shutil.copy2(src / name, dst / name)
    old = _train_tiny(tmp_path, num_sentinels=0, mode_tokens=())
    for name in ("sp2048.model", "sp2048_v2.model"):
        shutil.copy(old, dst / name)
        os.utime(dst / name)  # newer than the manifest, so only the layout check can reject it
    tok = tokenizer_lib.default_tokenizer(tmp_path)
    assert "not (2048, 3, 100" in caplog.text
    assert tok.model_path == dst / "sp2048_v2.model" and tok.num_sentinels == 100
    assert tok.model_path.read_bytes() == stdlib_data.tokenizer.model_path.read_bytes()


def test_unreadable_cache_is_rejected(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"not a model")
    assert tokenizer_lib._load_default_layout(tmp_path / "bad.model", 2048) is None


# --- Training with other layouts --------------------------------------------------------------

def test_custom_layout_and_determinism(tmp_path):
    path = _train_tiny(tmp_path, num_sentinels=5, mode_tokens=("[A]", "[B]"))
    tok = tokenizer_lib.Tokenizer(path)
    assert tok.vocab_size == 320 and tok.mode_tokens == {"[A]": 6, "[B]": 7}
    np.testing.assert_array_equal(tok.sentinel_ids, [12, 11, 10, 9, 8])
    again = _train_tiny(tmp_path, "again.model", num_sentinels=5, mode_tokens=("[A]", "[B]"))
    assert again.read_bytes() == path.read_bytes()
    text = "[B]def alpha_0(self):<extra_id_4>\treturn 🚀\n"
    assert tok.decode(tok.encode(text)) == text and len(tok.encode("[B]")) == 1


def test_unigram_and_no_reserved_tokens(tmp_path):
    tok = tokenizer_lib.Tokenizer(_train_tiny(tmp_path, num_sentinels=0, mode_tokens=(), model_type="unigram",
                                                   vocab_size=310))
    assert tok.num_sentinels == 0 and tok.mode_tokens == {} and tok.sentinel_ids.shape == (0,)
    with pytest.raises(tokenizer_lib.SentinelExhaustedError, match="has 0 sentinels"):
        tok.sentinel_id(0)
    with pytest.raises(ValueError, match="available: none"):
        tok.mode_token_id("[NLU]")
    assert tok.decode(tok.encode("value = 3\n")) == "value = 3\n"


@pytest.mark.parametrize("kwargs, match", [
    ({"mode_tokens": ("NLU",)}, "mode token 'NLU' must be a bracketed name"),
    ({"mode_tokens": ("[A]", "[A]")}, r"mode tokens \['\[A\]'\] are listed more than once"),
    ({"num_sentinels": -1}, "num_sentinels = -1"),
    ({"vocab_size": 300}, r"vocab_size = 300 leaves no room .* 100 sentinels .* = 365 reserved"),
    ({"model_type": "wordpiece"}, "model_type = 'wordpiece'"),
])
def test_training_rejects_bad_layouts(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tokenizer_lib.train_tokenizer([tmp_path / "unused.jsonl"], tmp_path / "x.model", **kwargs)


# --- Loading external models ------------------------------------------------------------------

def test_rejects_wrong_special_ids(tmp_path):
    # SentencePiece's default layout: unk=0, bos=1, eos=2, no pad.
    path = _train_raw(tmp_path, "default.model")
    with pytest.raises(ValueError, match="default.model: special ids"):
        tokenizer_lib.Tokenizer(path)


def test_accepts_t5_layout_without_bos(t5_like_model):
    tok = tokenizer_lib.Tokenizer(t5_like_model)
    assert tok.bos_id == -1 and tok.num_sentinels == 0 and tok.vocab_size == 40
    assert tok.decode(tok.encode("hello world")) == "hello world"


def test_t5_extra_ids_are_sentinels(t5_like_model):
    tok = tokenizer_lib.Tokenizer(t5_like_model, extra_ids=100)
    assert (tok.vocab_size, tok.num_pieces, tok.num_sentinels) == (140, 40, 100)
    assert tok.sentinel_id(0) == tok.vocab_size - 1 == 139 and tok.sentinel_id(99) == 40
    assert tok.decode([139]) == "<extra_id_0>"
    ids = [*tok.encode("hello"), 139, *tok.encode("world"), 138, 0, 140, 1000]
    # The space before "world" survives T5's dummy-prefix stripping.
    assert tok.decode(ids) == "hello<extra_id_0> world<extra_id_1>"
    assert all(i < 40 for i in tok.encode("<extra_id_0>"))  # extra ids are unknown to SentencePiece
    with pytest.raises(ValueError, match="sentinel 100 requested"):
        tok.sentinel_id(100)


def test_t5_declared_mode_tokens_take_the_lowest_extra_ids(t5_like_model):
    modes = {"[NLU]": 40, "[NLG]": 41, "[S2S]": 42}
    tok = tokenizer_lib.Tokenizer(t5_like_model, extra_ids=100, mode_token_ids=modes)
    assert tok.mode_tokens == modes and tok.num_sentinels == 97
    assert tok.sentinel_id(0) == 139 and tok.sentinel_id(96) == 43
    assert tok.decode([40, 139]) == "[NLU]<extra_id_0>"
    assert not tok.is_sentinel([40, 41, 42]).any()


@pytest.mark.parametrize("modes, match", [
    ({"[NLU]": 140}, r"\[NLU\] = 140 is outside the vocabulary 0..139"),
    ({"[NLU]": 0}, "collides with the pad id"),
    ({"[NLU]": 1}, "collides with the eos id"),
    ({"[NLU]": 139}, r"collides with sentinel <extra_id_0> .* must take the lowest ones, 40..40"),
    ({"[NLU]": 40, "[NLG]": 42}, r"\[NLG\] = 42 collides with sentinel <extra_id_97>"),
    ({"[NLU]": 40, "[NLG]": 40}, "maps several names to the same id"),
    ({"NLU": 40}, "mode token name 'NLU' must be a bracketed name"),
])
def test_declared_mode_tokens_are_validated(t5_like_model, modes, match):
    with pytest.raises(ValueError, match=match):
        tokenizer_lib.Tokenizer(t5_like_model, extra_ids=100, mode_token_ids=modes)


def test_declared_mode_token_on_in_model_sentinel(tmp_path):
    path = _train_tiny(tmp_path, num_sentinels=5, mode_tokens=())
    with pytest.raises(ValueError, match=r"\[NLU\] = 8 collides with a sentinel piece '<extra_id_2>'"):
        tokenizer_lib.Tokenizer(path, mode_token_ids={"[NLU]": 8})


def test_in_model_sentinels_exclude_extra_ids(tmp_path):
    path = _train_tiny(tmp_path, num_sentinels=5, mode_tokens=())
    with pytest.raises(ValueError, match="already has 5 sentinel pieces; load it with extra_ids=0"):
        tokenizer_lib.Tokenizer(path, extra_ids=100)


def test_control_symbol_sentinels_are_rendered(tmp_path):
    path = _train_raw(tmp_path, "ctl.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                      control_symbols=["<extra_id_1>", "<extra_id_0>", "[NLU]"])
    tok = tokenizer_lib.Tokenizer(path)
    assert list(tok.sentinel_ids) == [4, 3] and tok.mode_tokens == {"[NLU]": 5}
    # With a dummy prefix "hello" encodes as "▁hello", whose space decode keeps after a reserved id.
    assert tok.decode([5, *tok.encode("hello"), 4]) == "[NLU] hello<extra_id_0>"


def test_sentinel_pieces_must_be_consecutive(tmp_path):
    path = _train_raw(tmp_path, "gap.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                      user_defined_symbols=["<extra_id_0>", "<extra_id_2>"])
    with pytest.raises(ValueError, match=r"missing <extra_id_1>"):
        tokenizer_lib.Tokenizer(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        tokenizer_lib.Tokenizer(tmp_path / "nope.model")
