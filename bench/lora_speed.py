"""UNet call time with a LoRA adapter: merged vs the base UNet, and unmerged vs merged.

    .venv/bin/python bench/lora_speed.py [--size tiny|mid] [--reps 9] [--rank 32]

Three copies of the same UNet: the base, one with LoRA (rank ``--rank``, random non-zero
weights) left unmerged (peft adds x @ A @ B beside every targeted projection), and one with the
same LoRA merged into the weights (``kfi_core.model.lora.merge_lora``). Each candidate is one UNet
forward pass on the same input (batch 2 = CFG, 8 frames, 16x16 latents); runs are interleaved.
Targets: merged / base equal within the spread (merging leaves the architecture unchanged);
unmerged / merged shows what merging saves.
"""

from __future__ import annotations

import argparse
import copy

from common import build_components, describe, interleave, ratio_line, timed


def measure(size: str, reps: int, rank: int, threads: int) -> list[str]:
    import torch

    from kfi_core.model import add_lora, lora_state_dict, merge_lora

    torch.set_num_threads(threads)
    components = build_components(size)
    base = copy.deepcopy(components["unet"]).requires_grad_(False)  # a copy as the others: same memory layout
    unmerged = copy.deepcopy(base)
    add_lora(unmerged, rank=rank)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lora_state_dict(unmerged).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    merged = copy.deepcopy(unmerged)
    merge_lora(merged)
    for m in (unmerged, merged):
        m.eval().requires_grad_(False)
    frames = int(base.config.num_frames)
    x = torch.randn(2, frames, base.config.in_channels, 16, 16, generator=g)
    t = torch.tensor([0.5, 0.5])
    ehs = torch.randn(2, 1, base.config.cross_attention_dim, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)

    def call(unet):
        def run() -> float:
            with torch.no_grad():
                return timed(lambda: unet(x, t, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False))

        return run

    with torch.no_grad():
        diff = (
            (
                merged(x, t, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False)[0]
                - unmerged(x, t, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False)[0]
            )
            .abs()
            .max()
        )
    r = interleave({"base": call(base), "unmerged": call(unmerged), "merged": call(merged)}, reps=reps)
    return [
        f"[{size}] {describe(components)}; LoRA rank {rank}, UNet call batch 2 x {frames} frames 16x16 latents; "
        f"merged vs unmerged max |diff| {float(diff):.2e}",
        ratio_line(f"[{size}] UNet call LoRA merged / base", r["merged"], r["base"], "1.00 within spread"),
        ratio_line(f"[{size}] UNet call LoRA unmerged / merged", r["unmerged"], r["merged"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "mid"])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for line in measure(args.size, args.reps, args.rank, args.threads):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
