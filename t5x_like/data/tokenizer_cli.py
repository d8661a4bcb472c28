"""The ``t5x-like tokenizer`` command: train a SentencePiece model on JSONL, or show a model's layout.

    t5x-like tokenizer train --input 'data/*.jsonl.gz' --output runs/sp32k.model --vocab_size 32000
    t5x-like tokenizer info runs/sp32k.model
    t5x-like tokenizer info spiece.model --extra_ids 100    # T5's own vocabulary

The main CLI wires it with ``tokenizer_cli.add_parser(subparsers)`` and runs
``tokenizer_cli.run(args)`` when ``args.command == "tokenizer"``.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time

from t5x_like.data import tokenizer_training
from t5x_like.data.tokenizer import Tokenizer

# Enough text to estimate a 32k vocabulary; single-threaded (deterministic) BPE
# takes ~2.5 s for 32k pieces on 12 MB, so this stays well under a minute.
CLI_SAMPLE_BYTES = 50_000_000
SAMPLE_TEXT = "def greet(name):\n\treturn f'Hello, {name}!'  # café ☃"


def add_parser(subparsers) -> None:
    """Add the ``tokenizer`` command (``train`` and ``info``) to an argparse subparsers object."""
    cmd = subparsers.add_parser("tokenizer", help="train a SentencePiece tokenizer or show its layout",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = cmd.add_subparsers(dest="tokenizer_command", required=True)
    train = sub.add_parser("train", help="train a tokenizer on JSONL files")
    train.add_argument("--input", required=True,
                       help="comma-separated globs of .jsonl / .jsonl.gz / .jsonl.zst files, read in sorted order")
    train.add_argument("--output", required=True, help="path of the .model file to write")
    train.add_argument("--vocab_size", type=int, default=32000,
                       help="total ids, reserved ones (specials, sentinels, mode tokens, bytes) included")
    train.add_argument("--text_field", default="text", help="JSON field that holds the document text")
    train.add_argument("--num_sentinels", type=int, default=tokenizer_training.DEFAULT_NUM_SENTINELS,
                       help="reserve <extra_id_0> .. <extra_id_{N-1}>, ids counting down")
    train.add_argument("--mode_tokens", default=",".join(tokenizer_training.DEFAULT_MODE_TOKENS),
                       help="comma-separated mode tokens; '' for none")
    train.add_argument("--sample_bytes", type=int, default=CLI_SAMPLE_BYTES,
                       help="train on the first N bytes of text, in file order")
    train.add_argument("--model_type", choices=tokenizer_training.MODEL_TYPES, default="bpe")
    info = sub.add_parser("info", help="print a tokenizer's id layout")
    info.add_argument("model", help="path of a SentencePiece .model file")
    info.add_argument("--extra_ids", type=int, default=0,
                      help="ids appended after the model, used as sentinels (T5's spiece.model: 100)")
    info.add_argument("--mode_token_ids", default="",
                      help="declared mode tokens, e.g. '[NLU]=32000,[NLG]=32001,[S2S]=32002'")


def _expand_inputs(spec: str) -> list[str]:
    """Files matched by comma-separated globs, sorted per glob; ValueError for a glob with no match."""
    paths: list[str] = []
    for pattern in filter(None, (p.strip() for p in spec.split(","))):
        matched = sorted(glob.glob(pattern, recursive=True))
        if not matched:
            raise ValueError(f"--input glob {pattern!r} matches no file")
        paths.extend(p for p in matched if p not in paths)
    if not paths:
        raise ValueError(f"--input {spec!r} names no glob")
    return paths


def _parse_mode_token_ids(spec: str) -> dict[str, int] | None:
    """``'[NLU]=32000,[NLG]=32001'`` -> ``{'[NLU]': 32000, '[NLG]': 32001}``; None for ''."""
    if not spec:
        return None
    modes = {}
    for item in spec.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--mode_token_ids entry {item!r}: expected NAME=ID, e.g. [NLU]=32000")
        modes[name.strip()] = int(value)
    return modes


def describe(tok: Tokenizer) -> list[str]:
    """Human-readable lines on ``tok``'s id layout, with a sample encode/decode round trip."""
    lines = [f"model:        {tok.model_path}",
             f"vocab size:   {tok.vocab_size} ({tok.num_pieces} pieces + {tok.extra_ids} extra ids)",
             f"special ids:  pad={tok.pad_id} eos={tok.eos_id} unk={tok.unk_id} "
             f"bos={tok.bos_id if tok.bos_id >= 0 else 'none'}"]
    if tok.num_sentinels:
        first, last = tok.sentinel_id(0), tok.sentinel_id(tok.num_sentinels - 1)
        step = "down" if first > last or tok.num_sentinels == 1 else "up"
        lines.append(f"sentinels:    {tok.num_sentinels}, <extra_id_0>={first} .. "
                     f"<extra_id_{tok.num_sentinels - 1}>={last} (counting {step})")
    else:
        lines.append("sentinels:    none")
    modes = " ".join(f"{name}={i}" for name, i in tok.mode_tokens.items())
    lines.append(f"mode tokens:  {modes or 'none'}")
    ids = tok.encode(SAMPLE_TEXT)
    if tok.num_sentinels:
        ids = ids[:4] + [tok.sentinel_id(0)] + ids[4:]
    lines += [f"sample ids:   {ids}", f"sample text:  {tok.decode(ids)!r}"]
    return lines


def _train(args) -> int:
    mode_tokens = [m.strip() for m in args.mode_tokens.split(",") if m.strip()]
    paths = _expand_inputs(args.input)
    start = time.perf_counter()
    tokenizer_training.train_tokenizer(
        paths, args.output, vocab_size=args.vocab_size, text_field=args.text_field,
        sample_bytes=args.sample_bytes, num_sentinels=args.num_sentinels, mode_tokens=mode_tokens,
        model_type=args.model_type)
    seconds = time.perf_counter() - start
    print(f"trained on {len(paths)} file(s) in {seconds:.1f}s")
    print("\n".join(describe(Tokenizer(args.output))))
    return 0


def _info(args) -> int:
    tok = Tokenizer(args.model, extra_ids=args.extra_ids,
                    mode_token_ids=_parse_mode_token_ids(args.mode_token_ids))
    print("\n".join(describe(tok)))
    return 0


def run(args) -> int:
    """Execute a parsed ``tokenizer`` command; return the exit code (1 with a message on bad input)."""
    try:
        return {"train": _train, "info": _info}[args.tokenizer_command](args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"t5x-like tokenizer {args.tokenizer_command}: error: {e}", file=sys.stderr)
        return 1
