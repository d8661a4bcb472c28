"""The `infer`, `score` and `lm_eval` subcommands: decode or score a trained model's supervised
splits, or run lm-evaluation-harness over it.

    t5x-like infer --gin_file=runs/finetune.gin [--step=N] [--gin.InferConfig.num_beams=4]
    t5x-like score --gin_file=runs/finetune.gin
    t5x-like lm_eval --model_dir=runs/default --tasks=my_task --include_path=tasks/
"""

from __future__ import annotations

import json
import logging
import pathlib

log = logging.getLogger(__name__)


def add_parsers(sub) -> None:
    """Add the subcommands to the CLI's subparsers."""
    for name, text in (("infer", "decode the run's supervised eval split (InferConfig) into "
                                 "predictions.jsonl and its task metrics"),
                       ("score", "log-likelihood of each example's given targets "
                                 "(scores.jsonl)")):
        cmd = sub.add_parser(name, help=text,
                             epilog="Any --gin.KEY=VALUE sets a gin macro or binding.")
        cmd.add_argument("--gin_file", action="append", default=[],
                         help="gin file (repeatable), e.g. the run's, or MODEL_DIR/config.gin")
        cmd.add_argument("--step", type=int, default=None,
                         help="checkpoint step to read (default: MODEL_DIR's latest)")
    lm = sub.add_parser("lm_eval", help="run lm-evaluation-harness tasks over a decoder-only "
                                        "model (the lmeval extra)")
    lm.add_argument("--model_dir", required=True, help="MODEL_DIR of a training run")
    lm.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    lm.add_argument("--include_path", default=None,
                    help="directory of local task YAML files (no hub access needed)")
    lm.add_argument("--limit", type=float, default=None, help="examples per task")
    lm.add_argument("--batch_size", type=int, default=8)
    lm.add_argument("--output", default="", help="write the results JSON here")


def _setup(args, flags):
    """(cfg, is primary, tokenizer, params, graphdef, step, partitioner, supervised tasks)."""
    from t5x_like import cli, inputs, trainer
    from t5x_like.config import ConfigError
    cfg = cli._load(args, flags)
    primary = cli._join(cfg)
    tasks = [t for t in cfg.data.tasks_of()[0] if t.supervised]
    if not tasks:
        raise ConfigError(f"DataConfig.mixture_or_task_name = {cfg.data.mixture_or_task_name!r} "
                          "has no supervised task (TaskConfig.inputs_field/targets_field) to "
                          f"{args.command}; e.g. --gin_file=runs/finetune.gin")
    tokenizer = inputs.load_tokenizer(cfg)
    params, graphdef, step, partitioner = trainer.load_trained(cfg, step=args.step)
    log.info("%s: step %d of %s on %s", args.command, step, cfg.train.model_dir,
             partitioner.describe())
    return cfg, primary, tokenizer, params, graphdef, step, partitioner, tasks


def _out_dir(cfg, task, step: int, what: str) -> pathlib.Path:
    if cfg.infer.output_dir:
        return pathlib.Path(cfg.infer.output_dir) / task.name
    return (pathlib.Path(cfg.train.model_dir) / "inference"
            / f"{task.name}_{cfg.infer.split}_step{step}{what}")


def cmd_infer(args, flags) -> int:
    """Decode every supervised task's split; print each task's summary as JSON."""
    from t5x_like import inference, inputs
    from t5x_like.generate import Generator
    cfg, primary, tokenizer, params, graphdef, step, partitioner, tasks = _setup(args, flags)
    generator = Generator(params, graphdef, eos_id=tokenizer.eos_id,
                          prefix_lm=inference.is_prefix_lm(cfg),
                          partitioner=partitioner)
    for task in tasks:
        examples = inputs.supervised_examples(cfg, task, cfg.infer.split)
        out_dir = _out_dir(cfg, task, step, "")
        summary = inference.predict(cfg, examples, generator, tokenizer, out_dir, task=task,
                                    step=step)
        if primary:
            log.info("predictions of %s: %s", task.name, out_dir / "predictions.jsonl")
            print(json.dumps(summary))
    return 0


def cmd_score(args, flags) -> int:
    """Score every supervised task's split; print each task's summary as JSON."""
    from t5x_like import inference, inputs
    cfg, primary, _, params, graphdef, step, partitioner, tasks = _setup(args, flags)
    scorer = inference.Scorer(params, graphdef, partitioner)
    for task in tasks:
        examples = inputs.supervised_examples(cfg, task, cfg.infer.split)
        out_dir = _out_dir(cfg, task, step, "_scores")
        summary = inference.score(cfg, examples, scorer, out_dir, task=task, step=step,
                                  encoder_decoder=cfg.model.architecture == "encoder_decoder")
        if primary:
            print(json.dumps(summary))
    return 0


def cmd_lm_eval(args, flags) -> int:
    """lm-evaluation-harness's simple_evaluate over the model; print the results' table."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError("t5x-like lm_eval needs lm-eval: pip install -e '.[lmeval]'") from e
    from t5x_like.lm_eval_adapter import T5xLikeLM
    model = T5xLikeLM.from_model_dir(args.model_dir, batch_size=args.batch_size)
    results = lm_eval.simple_evaluate(
        model=model, tasks=args.tasks.split(","), limit=args.limit,
        task_manager=TaskManager(include_path=args.include_path), bootstrap_iters=0,
        log_samples=False)
    out = {"model_dir": args.model_dir, "results": results["results"]}
    print(json.dumps(out, indent=1, default=str))
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(out, indent=1, default=str))
    return 0
