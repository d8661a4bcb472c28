"""The `t5x-like` command line: train, eval and generate, configured by gin.

    t5x-like train                                  # tiny model on the embedded corpus
    t5x-like prepare --gin.MIXTURE_OR_TASK_NAME="'data/*.jsonl.zst'" --gin.DataConfig.eval_files=...
    t5x-like train --gin_file=runs/pretrain.gin --gin.TRAIN_STEPS=100 --gin.MODEL_DIR=/tmp/run
    t5x-like eval --gin.MODEL_DIR=/tmp/run
    t5x-like generate --model_dir=/tmp/run "def fibonacci(n):" [--num_beams=4]
    t5x-like train --gin_file=runs/finetune.gin     # fine-tune runs/default on a supervised task
    t5x-like infer --gin_file=runs/finetune.gin     # predictions.jsonl + the task's metrics
    t5x-like score --gin_file=runs/finetune.gin     # log-likelihood of the given targets
    t5x-like convert --from hf --to t5x_like ./t5-v1_1-base /tmp/t5base   # see docs/convert.md
    t5x-like inspect /tmp/run
    t5x-like compile --topology=v5e-256 --gin_file=runs/llama3_8b_fsdp.gin   # fits? (needs libtpu)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from t5x_like.config import ConfigError
from t5x_like.convert.tensors import ConversionError

log = logging.getLogger("t5x_like")
DEFAULT_MODEL_DIR = os.path.join("runs", "default")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t5x-like", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train (or resume) a model"),
                       ("eval", "evaluate MODEL_DIR's latest checkpoint"),
                       ("prepare", "tokenize the run's tasks into ArrayRecord shards and plan "
                                   "their packing (train does this on first use)")):
        cmd = sub.add_parser(name, help=text,
                             epilog="Any --gin.KEY=VALUE sets a gin macro or binding.")
        cmd.add_argument("--gin_file", action="append", default=[],
                         help="gin file (repeatable); relative paths also resolve against "
                              "configs/. Default: runs/pretrain.gin")
        if name == "eval":
            cmd.add_argument("--metadata", choices=("none", "true", "wrong"), default="none",
                             help="MeCo models: evaluate the documents behind their own "
                                  "metadata prefix (true), another's (wrong), or none")
    comp = sub.add_parser("compile", help="compile the train step ahead of time for a TPU "
                          "topology on this host: HBM, FLOPs and collectives per chip",
                          epilog="Any --gin.KEY=VALUE sets a gin macro or binding.")
    comp.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable), as for train. Default: runs/pretrain.gin")
    comp.add_argument("--topology", required=True,
                      help="MaxText's name: v5e-N, v6e-N (N chips), v4-N, v5p-N (N cores)")
    comp.add_argument("--num_slices", type=int, default=1, help="slices joined over DCN")
    comp.add_argument("--json", action="store_true", help="also print the report as JSON")
    comp.add_argument("--dump_hlo", default="", metavar="FILE",
                      help="write the compiled per-chip HLO text (what the counts are read from)")
    from t5x_like.data import tokenizer_cli
    tokenizer_cli.add_parser(sub)
    from t5x_like.convert import cli as convert_cli
    convert_cli.add_parsers(sub)
    from t5x_like import infer_cli
    infer_cli.add_parsers(sub)
    gen = sub.add_parser("generate", help="sample a continuation from a checkpoint")
    gen.add_argument("prompt")
    gen.add_argument("--model_dir", required=True, help="MODEL_DIR of a training run")
    gen.add_argument("--max_new_tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top_k", type=int, default=0, help="0 = no top-k filter")
    gen.add_argument("--top_p", type=float, default=1.0, help="1 = no nucleus filter")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--num_beams", type=int, default=1,
                     help="> 1: beam search with this many beams (sampling flags ignored)")
    gen.add_argument("--alpha", type=float, default=0.6,
                     help="beam search's length penalty exponent, as T5X (0 = log-likelihood)")
    gen.add_argument("--metadata", default=None,
                     help="MeCo: the metadata value (e.g. a URL or domain) whose prefix is put "
                          "in front of the prompt (after any mode token), as in stage-1 "
                          "training; any objective, either architecture")
    gen.add_argument("--mode", choices=("NLU", "NLG", "S2S"),
                     help="UL2 mode token put in front of the prompt (e.g. S2S to continue it)")
    return parser


def _split_gin_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Pull `--gin.KEY=VALUE` out of argv (argparse cannot declare free-form keys)."""
    rest, flags = [], {}
    for arg in argv:
        if arg.startswith("--gin."):
            key, sep, value = arg[len("--gin."):].partition("=")
            if not sep or not key:
                raise ConfigError(f"{arg!r}: expected --gin.KEY=VALUE")
            flags[key] = value
        else:
            rest.append(arg)
    return rest, flags


def _load(args, flags):
    from t5x_like import gin_loader
    cfg = gin_loader.load_run_config(args.gin_file or [gin_loader.DEFAULT_GIN_FILE], flags)
    if not cfg.train.model_dir:
        cfg = gin_loader.with_model_dir(cfg, DEFAULT_MODEL_DIR)
    return cfg


def _join(cfg) -> bool:
    """Join the multi-process run, if any (before any other JAX call); True on process 0."""
    import jax
    from t5x_like import distributed
    how = distributed.initialize(cfg.distributed)
    distributed.configure_logging()
    log.info("distributed: %s", how)
    return jax.process_index() == 0


def cmd_train(args, flags) -> int:
    """Train to TRAIN_STEPS, resuming from MODEL_DIR's latest checkpoint (or from a preemption
    checkpoint: a SIGTERM saves at the next step and exits 0; before the first step, while
    data is prepared or the step compiles, it exits 0 with nothing to save)."""
    from t5x_like import distributed
    try:
        with distributed.sigterm_exits_until_the_loop():
            return _train(args, flags)
    except distributed.StartupInterrupted:
        log.warning("SIGTERM before the training loop started: nothing to save yet, exiting; "
                    "a relaunch starts where the last checkpoint left off")
        return 0


def _train(args, flags) -> int:
    from t5x_like import gin_loader, inputs, trainer
    cfg = _load(args, flags)
    if os.path.exists(cfg.train.model_dir) and not os.path.isdir(cfg.train.model_dir):
        raise ConfigError(f"MODEL_DIR = {cfg.train.model_dir!r} is a file, not a directory: "
                          "name a directory (created if missing), or move the file away")
    if _join(cfg):
        print(f"MODEL_DIR: {os.path.abspath(cfg.train.model_dir)}", flush=True)
        gin_loader.write_operative_config(cfg.train.model_dir)
    _, run_inputs = inputs.build_inputs(cfg)
    rows = trainer.train(cfg, run_inputs)
    evals = [r for r in rows if "eval_loss" in r]
    if evals:
        print(f"eval_loss: {evals[0]['eval_loss']:.4f} (step {evals[0]['step']}) -> "
              f"{evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']}); metrics in "
              f"{os.path.join(cfg.train.model_dir, 'metrics.jsonl')}")
    return 0


def cmd_prepare(args, flags) -> int:
    """Prepare and plan every split of the configured task or mixture; print a summary."""
    from t5x_like import inputs
    cfg = _load(args, flags)
    for summary in inputs.prepare_all(cfg, progress=sys.stderr.isatty()):
        print(json.dumps(summary))
    return 0


def cmd_eval(args, flags) -> int:
    """Print eval metrics of MODEL_DIR's latest checkpoint as JSON: loss metrics over the eval
    split, and the decoded metrics of its supervised tasks (TaskConfig.metrics)."""
    from t5x_like import inference, inputs, trainer
    cfg = _load(args, flags)
    primary = _join(cfg)
    batches = inputs.build_eval_batches(cfg, metadata=args.metadata)
    params, graphdef, step, partitioner = trainer.load_trained(cfg)
    eval_step = trainer.compile_eval_step(graphdef, params, partitioner, batches[0],
                                          cfg.train.batch_size)
    metrics = trainer.evaluate(eval_step, params, batches, partitioner)
    task_evaluator = inference.TaskEvaluator(cfg, graphdef, partitioner,
                                             cfg.infer.max_examples)
    if task_evaluator:
        metrics |= task_evaluator(params, step)
    if primary:
        print(json.dumps({"step": step, **metrics}))
    return 0


def cmd_compile(args, flags) -> int:
    """Print what the TPU compiler says about the train step on a topology; exit 2 on OOM.

    No process group, no MODEL_DIR, no data: only shapes and the compiler."""
    import jax
    if "JAX_PLATFORMS" not in os.environ:
        # Run on the CPU backend: a TPU VM's chips stay free for the job they belong to, and a
        # host without TPUs skips libtpu's attempt to find some. The topology still compiles.
        jax.config.update("jax_platforms", "cpu")
    from t5x_like import aot
    cfg = _load(args, flags)
    try:
        report = aot.compile_for_topology(cfg, args.topology, args.num_slices,
                                          hlo_path=args.dump_hlo or None)
    except aot.CompileOOMError as e:
        print(f"t5x-like: compile: out of memory: {e}", file=sys.stderr)
        return 2
    print(aot.format_report(report))
    if args.json:
        print(json.dumps(report.to_dict()))
    return 0


def _metadata_prefix(cfg, tokenizer, value: str | None) -> list[int]:
    """Token ids of MeCo's prefix for `value` (tokenized apart from the prompt, as in training)."""
    if value is None:
        return []
    if not cfg.objective.metadata_field:
        raise ConfigError("--metadata needs a model trained with metadata conditioning "
                          "(ObjectiveConfig.metadata_field is empty in its config.gin)")
    from t5x_like.objectives.metadata import PrefixTokenizer
    spec = cfg.objective
    return PrefixTokenizer(tokenizer, spec).ids({spec.metadata_field: value}).tolist()


def cmd_generate(args, flags) -> int:
    """Print a sampled continuation of the prompt."""
    from t5x_like import gin_loader, inference, inputs, trainer
    from t5x_like.generate import Generator, Sampling
    cfg = gin_loader.load_model_dir_config(args.model_dir, flags)
    tokenizer = inputs.load_tokenizer(cfg)
    params, graphdef, step, partitioner = trainer.load_trained(cfg)
    mode = [tokenizer.mode_token_id(f"[{args.mode}]")] if args.mode else []
    # MeCo: the prefix sits where training put it, after the mode token (before the text).
    prefix = _metadata_prefix(cfg, tokenizer, args.metadata)
    text = tokenizer.encode(args.prompt)
    prefix_lm = inference.is_prefix_lm(cfg)
    if cfg.model.architecture == "encoder_decoder":
        # The encoder sees what the denoisers' inputs looked like: [mode] [metadata] prompt EOS.
        prompt = mode + prefix + text + [tokenizer.eos_id]
    elif prefix_lm:  # seqio's prefix-LM layout: [0] inputs EOS, attended both ways
        prompt = inference.prompt_of(mode + prefix + text + [tokenizer.eos_id], False)
    else:
        prompt = mode + ([tokenizer.bos_id] if tokenizer.bos_id >= 0 else []) + prefix + text
    generator = Generator(params, graphdef, eos_id=tokenizer.eos_id, prefix_lm=prefix_lm,
                          partitioner=partitioner)
    if args.num_beams > 1:
        result, = generator.beam_search([prompt], max_new_tokens=args.max_new_tokens,
                                        num_beams=args.num_beams, alpha=args.alpha)
    else:
        sampling = Sampling(args.temperature, args.top_k, args.top_p)
        result, = generator.generate([prompt], max_new_tokens=args.max_new_tokens,
                                     sampling=sampling, seed=args.seed)
    log.info("decoded %d tokens from step %d (log-likelihood %.3f)", len(result.tokens), step,
             result.score)
    continuation = tokenizer.decode(result.tokens)
    print(continuation if prefix_lm or generator.encoder_decoder else args.prompt + continuation)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `t5x-like` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    from t5x_like.distributed import NOISY_LOGGERS
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        rest, flags = _split_gin_flags(list(sys.argv[1:] if argv is None else argv))
        args = _parser().parse_args(rest)
        if args.command == "tokenizer":
            from t5x_like.data import tokenizer_cli
            return tokenizer_cli.run(args)
        if args.command == "generate" and "MODEL_DIR" in flags:
            raise ConfigError("generate takes --model_dir, not --gin.MODEL_DIR")
        from t5x_like import infer_cli
        from t5x_like.convert import cli as convert_cli
        command = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate,
                   "prepare": cmd_prepare, "convert": convert_cli.cmd_convert,
                   "inspect": convert_cli.cmd_inspect, "compile": cmd_compile,
                   "infer": infer_cli.cmd_infer, "score": infer_cli.cmd_score,
                   "lm_eval": infer_cli.cmd_lm_eval}[args.command]
        return command(args, flags)
    except ConfigError as e:
        print(f"t5x-like: configuration error: {e}", file=sys.stderr)
        return 2
    except ConversionError as e:
        print(f"t5x-like: conversion error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # every process reports its own failure, tagged with its id
        from t5x_like import distributed
        distributed.report_fatal(e)
        distributed.exit_after_fatal(1)
        return 1


# Commands that run compiled steps on this host, and so profit from `host_memory`.
_STEP_COMMANDS = ("train", "eval", "generate", "infer", "score", "lm_eval")


def entry() -> int:
    """The `t5x-like` console script: process-wide settings first, then `main`.

    Kept apart from `main` so that calling `main` in-process (tests, notebooks) leaves the
    caller's malloc alone; a `t5x-like` process owns its allocator.
    """
    if sys.argv[1:2] and sys.argv[1] in _STEP_COMMANDS:
        from t5x_like import host_memory  # before XLA starts its threads
        host_memory.retain_freed_memory()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
