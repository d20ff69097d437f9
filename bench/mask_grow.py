"""Mask grow/erode: kfi_core.media.mask_ops.grow (disk split into rows, O(r) per pixel) against the direct
convolution with the disk (O(r^2) per pixel), the implementation it replaced.

    .venv/bin/python bench/mask_grow.py [--size 720x1280] [--frames 8] [--radii 4,16,48] [--reps 5]

Both run on the same random blob masks in this process, interleaved; the lines give conv / rows per radius
(above 1 = the row split is faster) after checking the two agree exactly.
"""

from __future__ import annotations

import argparse

from common import interleave, ratio_line, timed


def grow_by_convolution(masks, pixels: int):
    """The direct definition, and what ``grow`` did before: count the disk's pixels of the region under each
    output pixel, O(r^2) per pixel. tests/test_mask_ops.py takes it as the oracle."""
    import torch
    import torch.nn.functional as F

    r = abs(pixels)
    ax = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = ((ax[None, :] ** 2 + ax[:, None] ** 2) <= r * r + 0.5).float()[None, None]
    src = masks if pixels > 0 else 1.0 - masks
    hit = F.conv2d(F.pad(src, (r,) * 4, value=0.0), disk) > 0.5
    return hit.float() if pixels > 0 else 1.0 - hit.float()


def main(argv=None) -> None:
    import torch
    import torch.nn.functional as F

    from kfi_core.media import grow

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="720x1280")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--radii", default="4,16,48")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(args.frames, 1, height // 32 + 1, width // 32 + 1, generator=gen)
    masks = (F.interpolate(coarse, size=(height, width), mode="bilinear") > 0.7).float()  # blobs
    print(f"{args.frames} masks {height}x{width}, {float(masks.mean()):.0%} fill, {torch.get_num_threads()} threads")
    for radius in (int(v) for v in args.radii.split(",")):
        for pixels in (radius, -radius):
            if not torch.equal(grow(masks, pixels), grow_by_convolution(masks, pixels)):
                raise SystemExit(f"grow({pixels}) differs from the disk convolution")
        times = interleave(
            {
                "conv": lambda: timed(lambda: grow_by_convolution(masks, radius)),
                "rows": lambda: timed(lambda: grow(masks, radius)),
            },
            reps=args.reps,
        )
        print(ratio_line(f"radius {radius}: conv / rows", times["conv"], times["rows"]))


if __name__ == "__main__":
    main()
