"""`t5x-like convert` and `t5x-like inspect`.

    t5x-like convert --from hf --to t5x_like ./t5-v1_1-base /tmp/t5base
    t5x-like convert --from t5x --to t5x_like gs_copy/checkpoint_1000000 /tmp/ul2 \\
        --gin.ModelConfig.mlp_activation=silu
    t5x-like convert --from t5x_like --to hf /tmp/run /tmp/run_hf --dtype=bfloat16
    t5x-like inspect /tmp/run

`--gin.ModelConfig.FIELD=VALUE` sets a field of the converted model (e.g. scan_layers, dtype);
any other `--gin.KEY=VALUE` goes into DST/config.gin like a `train` flag.
"""

from __future__ import annotations

import ast
import json
import pathlib
from typing import Any

from t5x_like.config import ConfigError

_ROUTES = (("hf", "t5x_like"), ("t5x", "t5x_like"), ("t5x_like", "hf"))


def add_parsers(sub) -> None:
    """Add the `convert` and `inspect` subcommands to the CLI's subparsers."""
    conv = sub.add_parser("convert", help="convert checkpoints: Hugging Face <-> t5x_like, "
                                          "T5X legacy -> t5x_like",
                          epilog="--gin.ModelConfig.FIELD=VALUE sets a field of the converted "
                                 "model; other --gin.KEY=VALUE go into DST/config.gin.")
    conv.add_argument("--from", dest="source_format", required=True,
                      choices=("hf", "t5x", "t5x_like"))
    conv.add_argument("--to", dest="target_format", required=True, choices=("t5x_like", "hf"))
    conv.add_argument("src", help="Hugging Face model directory, T5X checkpoint_<step> "
                                  "directory, or t5x_like MODEL_DIR (or its checkpoints/<step>)")
    conv.add_argument("dst", help="new directory to write")
    conv.add_argument("--gin_file", action="append", default=[],
                      help="run gin files DST/config.gin is composed of (repeatable; default "
                           "runs/pretrain.gin for decoders, runs/ul2_tiny.gin for T5)")
    conv.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                      help="store the parameters in this dtype, e.g. a bf16 parameters-only "
                           "export (default: float32; to t5x_like it sets "
                           "ModelConfig.param_dtype)")
    conv.add_argument("--t5x_scan_axis", type=int, default=1,
                      help="layer axis of a scanned T5X checkpoint (T5X's param_scan_axis)")
    ins = sub.add_parser("inspect", help="list a checkpoint: step, parameters with shapes, "
                                         "dtypes, shardings and sizes, data iterator state")
    ins.add_argument("checkpoint", help="MODEL_DIR (its latest step) or MODEL_DIR/checkpoints/N")
    ins.add_argument("--json", action="store_true", help="print the report as JSON")


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value  # a bare word, as in gin flags: --gin.ModelConfig.dtype=bfloat16


def _split_flags(flags: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    model = {k.split(".", 1)[1]: _literal(v) for k, v in flags.items()
             if k.startswith("ModelConfig.")}
    return model, {k: v for k, v in flags.items() if not k.startswith("ModelConfig.")}


def _hf_tokenizer(src: pathlib.Path, bindings: dict[str, str]) -> pathlib.Path | None:
    """The directory's sentencepiece model, if any; T5's sentinel count goes into `bindings`."""
    config = src / "tokenizer_config.json"
    if config.is_file() and "extra_ids" in (extra := json.loads(config.read_text())):
        bindings.setdefault("DataConfig.tokenizer_extra_ids", str(int(extra["extra_ids"])))
    for name in ("spiece.model", "tokenizer.model"):
        if (src / name).is_file():
            return src / name
    return None


def cmd_convert(args, flags: dict[str, str]) -> int:
    """Run one conversion and print what was written."""
    from t5x_like.convert import hf, model_dir, t5x_legacy
    route = (args.source_format, args.target_format)
    if route not in _ROUTES:
        raise ConfigError(f"--from {route[0]} --to {route[1]} is not a conversion; choose one of "
                          + ", ".join(f"{a}->{b}" for a, b in _ROUTES))
    overrides, bindings = _split_flags(flags)
    src = pathlib.Path(args.src)
    if route == ("t5x_like", "hf"):
        if overrides or bindings:
            raise ConfigError("--gin flags do not apply to an export: the model is the "
                              "checkpoint's")
        cfg, params, step = model_dir.read_params(src)
        out = hf.export_hf_dir(params, cfg, args.dst, dtype=args.dtype or "float32")
        print(f"wrote {out}/config.json and model.safetensors from step {step}")
        return 0
    tokenizer = None
    if args.dtype:  # allocate the converted tree in that dtype: no second, cast copy
        overrides.setdefault("param_dtype", args.dtype)
    if route == ("hf", "t5x_like"):
        cfg, params = hf.import_hf_dir(src, **overrides)
        tokenizer = _hf_tokenizer(src, bindings)
        origin = "Hugging Face"
    else:
        cfg, params, step = t5x_legacy.import_t5x_dir(src, args.t5x_scan_axis, **overrides)
        origin = f"T5X step {step}"
    out = model_dir.write_model_dir(args.dst, cfg, params, run_gin_files=args.gin_file or None,
                                    bindings=bindings, tokenizer=tokenizer)
    print(f"wrote {out} from {origin} ({cfg.architecture}); continue with\n"
          f"  t5x-like train --gin_file={out}/config.gin\n"
          f"  t5x-like generate --model_dir={out} PROMPT")
    return 0


def cmd_inspect(args, flags: dict[str, str]) -> int:
    """Print the checkpoint's report."""
    from t5x_like.convert import inspection
    if flags:
        raise ConfigError("inspect takes no --gin flags")
    report = inspection.describe(args.checkpoint)
    print(json.dumps(report, indent=1) if args.json else inspection.format_report(report))
    return 0
