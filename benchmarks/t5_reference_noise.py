"""Noise counts and lengths helper of t5x_like against the reference T5 preprocessors, side by side.

Runs t5's own ``random_spans_noise_mask`` and ``random_spans_helper`` (``t5/data/preprocessors.py``)
under TensorFlow and prints, per denoiser, how many lengths give other (noise tokens, noise runs)
than ``t5x_like.objectives.num_noise_and_spans``, and how many would with float64 rounding. The
reference drags in seqio, babel and more; only two seqio helpers are used on this path, so they are
supplied here and the module is loaded from its file. In a separate environment (TensorFlow and
jax do not share one well):

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu gin-config absl-py
    /tmp/tfenv/bin/pip install --no-deps t5 seqio
    PYTHONPATH=. /tmp/tfenv/bin/python benchmarks/t5_reference_noise.py
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    from t5x_like.objectives import num_noise_and_spans, random_spans_helper

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_length", type=int, default=600)
    args = parser.parse_args()
    ref = load_reference()
    print(f"| r | mu | lengths | ours != reference | float64 != reference | first disputed | "
          f"helper 512 / 1024 equal |")
    print("|---|---|---|---|---|---|---|")
    for rate, mu in DENOISERS:
        lengths = range(2, args.max_length)
        want = {n: reference_counts(ref, n, rate, mu) for n in lengths}
        ours = sum(num_noise_and_spans(n, rate, mu) != want[n] for n in lengths)
        f64 = [n for n in lengths if float64_counts(n, rate, mu) != want[n]]
        first = f"{f64[0]}: {want[f64[0]]}" if f64 else "-"
        helper = all(tuple(ref.random_spans_helper(i, rate, mu, 1, 1))
                     == random_spans_helper(i, rate, mu) for i in (512, 1024))
        print(f"| {rate} | {mu:g} | {len(lengths)} | {ours} | {len(f64)} | {first} | {helper} |")


if __name__ == "__main__":
    main()
