"""Noise counts and lengths helper of t5x_like against the reference T5 preprocessors, side by side.

Runs t5's own ``random_spans_noise_mask`` and ``random_spans_helper`` (``t5/data/preprocessors.py``)
under TensorFlow and prints, per denoiser, how many lengths give other (noise tokens, noise runs)
than ``t5x_like.objectives.num_noise_and_spans``, and how many would with float64 rounding; then,
over inputs lengths 2-4,096, at how many each ``random_spans_helper`` plans a raw length whose
mask breaks the plan (both miss at the smallest lengths, where the mask clamps its counts and the
helper does not, and at r = 0.5, where the helper's "minor hack" drops a target on purpose). The
reference drags in seqio, babel and more; only two seqio helpers are used on this path, so they are
supplied here and the module is loaded from its file. In a separate environment (TensorFlow and
jax do not share one well):

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu gin-config absl-py
    /tmp/tfenv/bin/pip install --no-deps t5 seqio
    PYTHONPATH=. /tmp/tfenv/bin/python benchmarks/t5_reference_noise.py
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import types

import numpy as np

DENOISERS = [(0.15, 3.0), (0.15, 8.0), (0.5, 3.0), (0.5, 8.0), (0.15, 64.0), (0.5, 64.0),
             (0.3, 3.0), (0.35, 3.0), (0.25, 3.0)]


def load_reference():
    """t5.data.preprocessors with the two seqio helpers its span-corruption path calls."""
    import tensorflow as tf

    def map_over_dataset(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

    def stateless_shuffle(value, seed):  # seqio.utils.stateless_shuffle
        flat = tf.reshape(value, [-1])
        order = tf.argsort(tf.random.stateless_uniform(tf.shape(flat), seed=seed))
        return tf.reshape(tf.gather(flat, order), tf.shape(value))

    seqio = types.ModuleType("seqio")
    seqio.map_over_dataset, seqio.stateless_shuffle, seqio.Feature = (
        map_over_dataset, stateless_shuffle, object)
    seqio.utils = types.SimpleNamespace(map_over_dataset=map_over_dataset)
    seqio.preprocessors = types.SimpleNamespace(append_eos=None, rekey=None, tokenize=None)
    sys.modules.setdefault("seqio", seqio)
    sys.modules.setdefault("babel", types.ModuleType("babel"))
    path = importlib.util.find_spec("t5").submodule_search_locations[0] + "/data/preprocessors.py"
    spec = importlib.util.spec_from_file_location("t5_reference_preprocessors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_counts(ref, length: int, rate: float, mu: float) -> tuple[int, int]:
    mask = ref.random_spans_noise_mask(length, rate, seeds=[(1, 2), (3, 4)],
                                       mean_noise_span_length=mu).numpy().astype(int)
    return int(mask.sum()), int((np.diff(mask) == 1).sum() + mask[0])


def float64_counts(length: int, rate: float, mu: float) -> tuple[int, int]:
    n_noise = min(max(round(length * rate), 1), length - 1)
    return n_noise, min(max(1, round(n_noise / mu)), n_noise, length - n_noise)


def helper_misses(helper, counts, max_inputs: int) -> int:
    """Inputs lengths 2..max_inputs-1 whose planned raw length T gets a mask that breaks the plan.

    A miss: the mask's targets (noise + one sentinel per span + EOS) differ from the planned
    targets length, or its inputs exceed the planned inputs length.
    """
    misses = 0
    for inputs_length in range(2, max_inputs):
        tokens_length, targets_length = helper(inputs_length)
        n_noise, n_spans = counts(tokens_length)
        misses += (n_noise + n_spans + 1 != targets_length
                   or tokens_length - n_noise + n_spans + 1 > inputs_length)
    return misses


def main() -> None:
    from t5x_like.objectives import num_noise_and_spans, random_spans_helper

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_length", type=int, default=600)
    parser.add_argument("--max_inputs", type=int, default=4097,
                        help="helpers are checked for inputs lengths 2..max_inputs-1")
    args = parser.parse_args()
    ref = load_reference()
    print(f"| r | mu | lengths | ours != reference | float64 != reference | first disputed | "
          f"helper 512 / 1024 equal | helper misses its mask: reference / ours |")
    print("|---|---|---|---|---|---|---|---|")
    for rate, mu in DENOISERS:
        counts = functools.lru_cache(maxsize=None)(
            lambda n, rate=rate, mu=mu: reference_counts(ref, n, rate, mu))
        lengths = range(2, args.max_length)
        ours = sum(num_noise_and_spans(n, rate, mu) != counts(n) for n in lengths)
        f64 = [n for n in lengths if float64_counts(n, rate, mu) != counts(n)]
        first = f"{f64[0]}: {counts(f64[0])}" if f64 else "-"
        ref_helper = lambda i, rate=rate, mu=mu: tuple(ref.random_spans_helper(i, rate, mu, 1, 1))
        our_helper = lambda i, rate=rate, mu=mu: random_spans_helper(i, rate, mu)
        helper = all(ref_helper(i) == our_helper(i) for i in (512, 1024))
        misses = [helper_misses(h, counts, args.max_inputs) for h in (ref_helper, our_helper)]
        print(f"| {rate} | {mu:g} | {len(lengths)} | {ours} | {len(f64)} | {first} | {helper} | "
              f"{misses[0]} / {misses[1]} |", flush=True)


if __name__ == "__main__":
    main()
