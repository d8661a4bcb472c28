"""lm-evaluation-harness over t5x_like decoder-only models (the `lmeval` extra).

    t5x-like lm_eval --model_dir=runs/default --tasks=hellaswag [--include_path=DIR]

or, from Python, ``lm_eval.simple_evaluate(model=T5xLikeLM.from_model_dir(d), tasks=[...])``;
``lm_eval --model t5x_like --model_args model_dir=...`` also works once this module is imported.

`loglikelihood` scores each (context, continuation) pair teacher-forced in one row, as the
harness's Hugging Face model does: ``[BOS] context continuation``, the continuation's tokens
being those of the whole text past the context's (so a merge across the boundary is scored as
the model would see it). A prefix LM sees the context bidirectionally, as it was trained.
`generate_until` decodes over the KV cache (greedy, or sampled when the task asks) and cuts at
the first stop string. `loglikelihood_rolling` scores a whole text in windows of the model's
row length.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from t5x_like.generate import Generator, Sampling, bucket
from t5x_like.inference import (Scorer, decoder_only_row, is_prefix_lm, prompt_of,
                                stack_rows)


def _causal_row(context: Sequence[int], continuation: Sequence[int], length: int
                ) -> dict[str, np.ndarray]:
    """Next-token features of ``context + continuation`` (context starts with BOS), loss on
    the continuation."""
    seq = np.asarray(list(context) + list(continuation), np.int32)
    n = seq.size - 1
    row = {k: np.zeros(length, np.int32) for k in (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
        "decoder_segment_ids")}
    row["decoder_input_tokens"][:n], row["decoder_target_tokens"][:n] = seq[:-1], seq[1:]
    row["decoder_loss_weights"][len(context) - 1:n] = 1
    row["decoder_segment_ids"][:n] = 1
    row["decoder_positions"] = np.arange(length, dtype=np.int32)
    return row


@register_model("t5x_like")
class T5xLikeLM(LM):
    """A trained decoder-only model as an lm-eval `LM`."""

    def __init__(self, generator: Generator, scorer: Scorer, tokenizer, *, max_length: int,
                 batch_size: int = 8, prefix_lm: bool = False):
        super().__init__()
        if generator.encoder_decoder:
            raise ValueError("the lm-eval adapter serves decoder-only models; an "
                             "encoder-decoder is evaluated with `t5x-like infer`")
        self.generator, self.scorer, self.tokenizer = generator, scorer, tokenizer
        self.max_length, self.batch_size, self.prefix_lm = max_length, batch_size, prefix_lm
        self.bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else [tokenizer.eos_id]

    @classmethod
    def from_model_dir(cls, model_dir: str, batch_size: int = 8, **_: Any) -> "T5xLikeLM":
        """The latest checkpoint of a training run's MODEL_DIR."""
        from t5x_like import gin_loader, inputs, trainer
        cfg = gin_loader.load_model_dir_config(model_dir, {})
        tokenizer = inputs.load_tokenizer(cfg)
        params, graphdef, _, partitioner = trainer.load_trained(cfg)
        prefix_lm = is_prefix_lm(cfg)  # the adapter refuses encoder-decoders itself
        return cls(Generator(params, graphdef, eos_id=tokenizer.eos_id, prefix_lm=prefix_lm,
                             partitioner=partitioner),
                   Scorer(params, graphdef, partitioner), tokenizer,
                   max_length=cfg.data.seq_len, batch_size=int(batch_size), prefix_lm=prefix_lm)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config=None) -> "T5xLikeLM":
        args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
        return cls.from_model_dir(**args, **{k: v for k, v in (additional_config or {}).items()
                                             if k == "batch_size" and v is not None})

    # ------------------------------------------------------------------ scoring
    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        whole = self.tokenizer.encode(context + continuation)
        ctx = self.tokenizer.encode(context) if context else []
        if whole[:len(ctx)] != ctx:  # the boundary merged: score the continuation alone
            return ctx, self.tokenizer.encode(continuation)
        return ctx, whole[len(ctx):]

    def _rows(self, pairs: list[tuple[list[int], list[int]]]):
        """Rows of (context, continuation) ids, left-truncated to the model's row length."""
        rows = []  # a prefix LM: seqio's [0] context | continuation, the context both ways
        for ctx, cont in pairs:
            room = self.max_length - len(cont) - 1
            ctx = ctx[max(len(ctx) - room, 0):]
            rows.append(decoder_only_row(ctx, cont, self.max_length) if self.prefix_lm
                        else _causal_row(self.bos + ctx, cont, self.max_length))
        return stack_rows(rows)

    def _score(self, pairs) -> list[tuple[float, bool]]:
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            scores, _, greedy = self.scorer(self._rows(chunk), with_greedy=True)
            out += [(float(s), bool(g)) for s, g in zip(scores, greedy)]
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score([self._split(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in requests:
            ids = self.tokenizer.encode(request.args[0])
            window = self.max_length - 1
            pieces = [(ids[max(i - window, 0):i] if i else [], ids[i:i + window])
                      for i in range(0, len(ids), window)]
            out.append(sum(s for s, _ in self._score(pieces)))
        return out

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            sampling = (Sampling(float(kwargs.get("temperature", 1.0)), 0,
                                 float(kwargs.get("top_p", 1.0)))
                        if kwargs.get("do_sample") else Sampling())
            ctx = self.tokenizer.encode(context)
            ctx = ctx[max(len(ctx) - (self.max_length - max_new - 1), 0):]
            prompt = (prompt_of(ctx + [self.tokenizer.eos_id], False) if self.prefix_lm
                      else self.bos + ctx)
            result, = self.generator.generate([prompt], max_new_tokens=max_new,
                                              sampling=sampling, prompt_length=bucket(
                                                  len(prompt), 64))
            text = self.tokenizer.decode(result.tokens)
            cuts = [text.index(s) for s in until if s in text]
            out.append(text[:min(cuts)] if cuts else text)
        return out
