"""Tests for the SentencePiece tokenizer."""

import json

import pytest
import sentencepiece as spm

from t5x_like.data import tokenizer as tokenizer_lib


def _texts(path, n=None):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:n]


def test_special_ids(stdlib_data):
    tok = stdlib_data.tokenizer
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 2048
    assert tok.model_path.name == "sp2048.model"


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
    padded = [0, 0] + ids[:1] + [tok.vocab_size, tok.vocab_size + 7] + ids[1:] + [0] * 5
    assert tok.decode(padded) == "import os\n"


def test_training_is_deterministic(stdlib_data, tmp_path):
    path = tokenizer_lib.train_tokenizer([stdlib_data.paths["train"]], tmp_path / "again.model")
    assert path.read_bytes() == stdlib_data.tokenizer.model_path.read_bytes()


def _train_raw(tmp_path, name, **ids):
    """A tiny SentencePiece model with the given special-id options."""
    path = tmp_path / name
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world", "goodbye world"] * 20), model_prefix=str(path.with_suffix("")),
        vocab_size=40, model_type="bpe", minloglevel=2, num_threads=1, **ids,
    )
    return path


def test_rejects_wrong_special_ids(tmp_path):
    # SentencePiece's default layout: unk=0, bos=1, eos=2, no pad.
    path = _train_raw(tmp_path, "default.model")
    with pytest.raises(ValueError, match="default.model: special ids"):
        tokenizer_lib.Tokenizer(path)


def test_accepts_t5_layout_without_bos(tmp_path):
    path = _train_raw(tmp_path, "t5.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    tok = tokenizer_lib.Tokenizer(path)
    assert tok.bos_id == -1
    assert tok.decode(tok.encode("hello world")) == "hello world"


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        tokenizer_lib.Tokenizer(tmp_path / "nope.model")
