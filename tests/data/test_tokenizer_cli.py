"""Tests for the `t5x-like tokenizer` subcommand, through a small argparse harness."""

import argparse
import gzip
import json

import pytest
import sentencepiece as spm

from t5x_like.data import tokenizer_cli
from t5x_like.data.tokenizer import Tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "return", "value", "index", "print", "self", "item"]


def _docs(first, n):
    for d in range(first, first + n):
        lines = [f"def {WORDS[d % 10]}_{d}(self, {WORDS[d * 3 % 10]}):"]
        lines += [f"    {WORDS[(d + k) % 10]} = {WORDS[d * k % 10]} + {k}" for k in range(6)]
        yield json.dumps({"body": "\n".join(lines) + "\n"}) + "\n"


def _main(argv):
    """What `t5x-like` does with these arguments: parse, then dispatch to tokenizer_cli.run."""
    parser = argparse.ArgumentParser(prog="t5x-like")
    sub = parser.add_subparsers(dest="command", required=True)
    tokenizer_cli.add_parser(sub)
    args = parser.parse_args(argv)
    assert args.command == "tokenizer"
    return tokenizer_cli.run(args)


@pytest.fixture
def corpus(tmp_path):
    """Two JSONL files (plain and gzip) with the text under 'body'."""
    (tmp_path / "a.jsonl").write_text("".join(_docs(0, 15)))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.writelines(_docs(15, 15))
    return tmp_path


def test_train_writes_model_and_prints_layout(corpus, capsys):
    out = corpus / "models" / "tok.model"
    rc = _main(["tokenizer", "train", "--input", f"{corpus}/*.jsonl,{corpus}/*.jsonl.gz", "--output", str(out),
                "--vocab_size", "320", "--text_field", "body", "--num_sentinels", "5",
                "--mode_tokens", "[NLU],[S2S]", "--sample_bytes", "100000"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trained on 2 file(s)" in printed
    assert "vocab size:   320 (320 pieces + 0 extra ids)" in printed
    assert "special ids:  pad=0 eos=1 unk=2 bos=3" in printed
    assert "sentinels:    5, <extra_id_0>=12 .. <extra_id_4>=8 (counting down)" in printed
    assert "mode tokens:  [NLU]=6 [S2S]=7" in printed
    tok = Tokenizer(out)
    assert tok.num_sentinels == 5 and tok.mode_tokens == {"[NLU]": 6, "[S2S]": 7}


def test_train_without_reserved_tokens(corpus, capsys):
    out = corpus / "plain.model"
    assert _main(["tokenizer", "train", "--input", f"{corpus}/a.jsonl", "--output", str(out), "--vocab_size", "300",
                  "--text_field", "body", "--num_sentinels", "0", "--mode_tokens", ""]) == 0
    printed = capsys.readouterr().out
    assert "sentinels:    none" in printed and "mode tokens:  none" in printed


@pytest.mark.parametrize("argv, message", [
    (["--input", "{d}/*.parquet"], "--input glob '{d}/*.parquet' matches no file"),
    (["--input", "{d}/a.jsonl", "--mode_tokens", "NLU"], "mode token 'NLU' must be a bracketed name"),
    (["--input", "{d}/a.jsonl", "--vocab_size", "200"], "vocab_size = 200 leaves no room"),
    (["--input", "{d}/a.jsonl"], "no usable 'text' text"),  # the corpus uses 'body'
])
def test_train_errors_exit_1_with_message(corpus, capsys, argv, message):
    argv = [a.format(d=corpus) for a in argv]
    assert _main(["tokenizer", "train", "--output", str(corpus / "x.model"), *argv]) == 1
    assert f"t5x-like tokenizer train: error: {message.format(d=corpus)}" in capsys.readouterr().err
    assert not (corpus / "x.model").exists()


@pytest.fixture
def t5_like_model(tmp_path):
    """Stands in for T5's spiece.model: pad 0, eos 1, unk 2, no BOS, 40 pieces."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world", "goodbye world"] * 20), model_prefix=str(tmp_path / "t5"),
        vocab_size=40, model_type="bpe", minloglevel=2, num_threads=1, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    return tmp_path / "t5.model"


def test_info_t5_layout_with_declared_mode_tokens(t5_like_model, capsys):
    assert _main(["tokenizer", "info", str(t5_like_model), "--extra_ids", "100",
                  "--mode_token_ids", "[NLU]=40,[NLG]=41,[S2S]=42"]) == 0
    printed = capsys.readouterr().out
    assert "vocab size:   140 (40 pieces + 100 extra ids)" in printed
    assert "special ids:  pad=0 eos=1 unk=2 bos=none" in printed
    assert "sentinels:    97, <extra_id_0>=139 .. <extra_id_96>=43 (counting down)" in printed
    assert "mode tokens:  [NLU]=40 [NLG]=41 [S2S]=42" in printed
    assert "<extra_id_0>" in printed.split("sample text:")[1]


@pytest.mark.parametrize("argv, message", [
    (["--mode_token_ids", "[NLU]:40"], "expected NAME=ID"),
    (["--mode_token_ids", "[NLU]=139"], "collides with sentinel <extra_id_0>"),
    (["--extra_ids", "-1"], "extra_ids = -1 must be >= 0"),
])
def test_info_errors_exit_1_with_message(t5_like_model, capsys, argv, message):
    assert _main(["tokenizer", "info", str(t5_like_model), "--extra_ids", "100", *argv]) == 1
    assert message in capsys.readouterr().err


def test_info_missing_model(tmp_path, capsys):
    assert _main(["tokenizer", "info", str(tmp_path / "nope.model")]) == 1
    assert "nope.model does not exist" in capsys.readouterr().err
