"""Running out of device memory: retry with smaller chunks, down to a floor, then give up.

A VAE decode (or encode) of ``chunk`` frames at a time is the step whose memory the user can
trade for time without changing the result: the temporal decoder sees ``num_frames`` = chunk
length either way, and a smaller chunk gives the same frames within rounding. When it runs out
of device memory, :func:`retry_on_oom` halves the chunk and tries again, logging a WARNING each
time, until ``floor``; at the floor it tries the caller's fallback, if any (the VAE decode falls back to spatial
tiles, :func:`kfi_core.model.encoders.decode_latents_tiled`), and otherwise re-raises the original error (ComfyUI
then unloads models and shows its own out-of-memory tip). As ComfyUI's upscale node does with its tiles.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's OutOfMemoryError (CUDA, and other backends) and RuntimeErrors saying 'out of memory'."""
    oom_types = tuple(
        t
        for t in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None),
        )
        if t is not None
    )
    if oom_types and isinstance(err, oom_types):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def free_device_cache() -> None:
    """Collect garbage and return cached blocks to the device (no-op on CPU)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def retry_on_oom(
    fn: Callable[[int], T],
    chunk: int,
    *,
    floor: int = 1,
    what: str = "decode_chunk_size",
    fallback: Callable[[int], T] | None = None,
    fallback_note: str = "the fallback",
) -> T:
    """``fn(chunk)``; on out-of-memory, retry with half the chunk (at least ``floor``), then re-raise.

    ``what`` names the setting in the WARNING, so the user can set it lower next time. ``fallback``, if given, is
    the last try when even ``floor`` runs out of memory: ``fallback(floor)``, after a WARNING that says so
    (``fallback_note`` describes it, e.g. the tiled decode); if it runs out of memory too, that error is raised.
    """
    chunk, floor = max(1, int(chunk)), max(1, int(floor))
    while True:
        try:
            return fn(chunk)
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(err) or (chunk <= floor and fallback is None):
                raise
            if chunk <= floor:
                logger.warning("out of device memory with %s=%d; falling back to %s", what, chunk, fallback_note)
                fn, fallback = fallback, None
            else:
                smaller = max(floor, chunk // 2)
                logger.warning(
                    "out of device memory with %s=%d; retrying with %d (set %s=%d or lower to skip this)",
                    what,
                    chunk,
                    smaller,
                    what,
                    smaller,
                )
                chunk = smaller
        # outside the except block: the failed attempt's traceback (and its tensors) is gone
        free_device_cache()
