"""Metrics of decoded outputs: exact match, accuracy, sacreBLEU and ROUGE by name."""

import pytest

from t5x_like import task_metrics
from t5x_like.config import ConfigError, TaskConfig


def test_exact_match_ignores_surrounding_whitespace_and_accuracy_does_not():
    targets, predictions = ["f(x)", "g()", "h(a, b)", "k"], ["f(x) ", "g(1)", "h(a, b)", "k"]
    assert task_metrics.compute(["exact_match", "accuracy"], targets, predictions) == {
        "exact_match": 75.0, "accuracy": 50.0}


def test_bleu_and_rouge_come_from_their_libraries():
    sacrebleu = pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    targets = ["the cat sat on the mat", "a quick brown fox jumps"]
    predictions = ["the cat sat on a mat", "a quick brown fox jumps"]
    got = task_metrics.compute(["bleu", "rouge"], targets, predictions)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [targets]).score)
    assert 0 < got["bleu"] < 100
    assert task_metrics.compute(["bleu"], targets, targets)["bleu"] == pytest.approx(100.0)
    # 5 of 6 unigrams shared in the first pair (F = 5/6), all in the second.
    assert got["rouge1"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    assert got["rouge2"] < got["rouge1"] and set(got) == {"bleu", "rouge1", "rouge2",
                                                          "rougeLsum"}


def test_mismatched_lengths_and_unknown_or_misplaced_metrics_are_refused():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        task_metrics.compute(["exact_match"], ["a", "b"], ["a"])
    with pytest.raises(ConfigError, match="TaskConfig.metrics.*unknown \\['f1'\\]"):
        TaskConfig(name="qa", train_source="x.jsonl", inputs_field="q", targets_field="a",
                   metrics=("f1",))
    with pytest.raises(ConfigError, match="TaskConfig.metrics.*supervised"):
        TaskConfig(name="lm", train_source="x.jsonl", metrics=("exact_match",))
