"""Packing plans on disk: one ``.npz`` per plan, next to the prepared data it indexes.

Every plan (causal, denoising, MeCo) is a frozen dataclass of arrays and integers; this module
saves and loads such dataclasses and builds a plan only when its file is missing, writing it
atomically so that a killed run or a concurrent process never leaves a half-written plan.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, TypeVar

import numpy as np

from t5x_like import fileio

T = TypeVar("T", bound="NpzDataclass")


class NpzDataclass:
    """Mixin for dataclasses whose fields are numpy arrays or ints: ``save`` / ``load`` as .npz."""

    def save(self, path: str | os.PathLike) -> None:
        """Write every field to one ``.npz`` at exactly ``path`` (no ".npz" appended), all or
        nothing: a kill mid-write leaves no file a later run would load as a plan."""
        with fileio.atomic_writer(path, "wb") as f:  # a file object: savez appends no ".npz"
            np.savez(f, **{k.name: np.asarray(getattr(self, k.name))
                           for k in dataclasses.fields(self)})

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        """Read a file written by :meth:`save`; 0-d fields come back as Python ints. A field with
        a default that the file lacks (written before the field existed) takes its default."""
        with np.load(path) as data:
            return cls(**{k.name: (int(data[k.name]) if data[k.name].ndim == 0 else data[k.name])
                          for k in dataclasses.fields(cls) if k.name in data.files})


def load_or_build(path: pathlib.Path, cls: type[T], build: Callable[[], T]) -> tuple[T, bool]:
    """``(plan, built)``: the plan stored at ``path``, or ``build()`` saved there atomically."""
    if path.is_file():
        return cls.load(path), False
    plan = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    plan.save(path)
    return plan, True
