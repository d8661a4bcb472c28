"""Metrics of what a model outputs, by name, as seqio's metric functions: each takes the targets
and the predictions (strings, in the same order) and returns named scores in percent.

A task declares them in gin (``TaskConfig.metrics = ('exact_match', 'bleu')``); `infer`, `eval`
and the trainer's eval passes compute them over the decoded eval split. BLEU and ROUGE come from
the libraries the T5 papers' numbers come from (sacreBLEU, Google's rouge-score), in the `eval`
extra; asking for one without its library says which package to install.
"""

from __future__ import annotations

from typing import Callable, Sequence

MetricFn = Callable[[Sequence[str], Sequence[str]], dict[str, float]]


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percent of predictions equal to their target, ignoring surrounding whitespace."""
    hits = sum(t.strip() == p.strip() for t, p in zip(targets, predictions))
    return {"exact_match": 100.0 * hits / max(len(targets), 1)}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percent of predictions identical to their target (classification labels)."""
    hits = sum(t == p for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * hits / max(len(targets), 1)}


def _require(module: str, package: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"this metric needs {package}: pip install -e '.[eval]' (or "
                          f"pip install {package})") from e


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU with sacreBLEU's defaults (13a tokenization, exponential smoothing), as
    seqio's `bleu` (which also takes a single reference per example)."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    score = sacrebleu.corpus_bleu(list(predictions), [list(targets)], smooth_method="exp",
                                  tokenize="13a", use_effective_order=False)
    return {"bleu": float(score.score)}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures with Porter stemming (as seqio's
    `rouge`, without its bootstrap: the mean over examples). ROUGE-Lsum splits summaries at
    newlines."""
    scorer_lib = _require("rouge_score.rouge_scorer", "rouge-score")
    types = ("rouge1", "rouge2", "rougeLsum")
    scorer = scorer_lib.RougeScorer(types, use_stemmer=True)
    totals = dict.fromkeys(types, 0.0)
    for target, prediction in zip(targets, predictions):
        for name, score in scorer.score(target, prediction).items():
            totals[name] += score.fmeasure
    return {name: 100.0 * total / max(len(targets), 1) for name, total in totals.items()}


METRICS: dict[str, MetricFn] = {"exact_match": exact_match, "accuracy": accuracy, "bleu": bleu,
                                "rouge": rouge}


def compute(names: Sequence[str], targets: Sequence[str], predictions: Sequence[str]
            ) -> dict[str, float]:
    """Every named metric over the pairs, merged into one dict."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    out: dict[str, float] = {}
    for name in names:
        out.update(METRICS[name](targets, predictions))
    return out
