"""Digests of the rows every shipped run config trains and evaluates on, to compare commits.

Not a speed benchmark: a change to the data path that should leave rows alone is checked by
running this at both commits (each in its own checkout and data directory) and comparing the
lines. A golden test cannot pin them: the embedded corpus is the interpreter's standard
library, so the rows depend on the Python version.

    python benchmarks/rows_digest.py --data_dir /tmp/digest_data [--batches 4]
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np

from t5x_like import gin_loader, inputs

CONFIGS = ("pretrain", "meco_tiny", "ul2_tiny", "ul2_decoder_tiny", "meco_ul2_tiny",
           "meco_ul2_decoder_tiny", "mixture")


def _digest(batches) -> str:
    h = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            h.update(key.encode())
            h.update(np.ascontiguousarray(batch[key]).tobytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    """Print one line per config: the digest of its first train batches and of its eval batches."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="DataConfig.data_dir for every config")
    parser.add_argument("--batches", type=int, default=4, help="train batches to digest")
    args = parser.parse_args(argv)
    for name in CONFIGS:
        cfg = gin_loader.load_run_config([f"runs/{name}.gin"],
                                         {"DataConfig.data_dir": repr(args.data_dir)})
        _, data = inputs.build_inputs(cfg)
        train = [next(data.train_iter) for _ in range(args.batches)]
        print(f"{name:24s} train {_digest(train)}  eval {_digest(data.eval_batches)}", flush=True)
    return 0


if __name__ == "__main__":  # prepare's worker processes re-import this module
    sys.exit(main())
