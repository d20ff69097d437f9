"""Long-video schedules: cost in UNet frame-evaluations per output frame, and host memory against clip length.

    .venv/bin/python bench/schedules.py [--memory] [--frames 25 100 250]

Cost is exact (counted from the schedule). Memory runs the tiny model on clips of each length
in a fresh process each (peak RSS is per process) and prints peak RSS above the loaded model,
next to the size of the frames themselves and as a ratio to the shortest clip: the executor
keeps one window's latents on the device, so beyond the frames (input, masks, output) memory
should stay flat.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cost_table(frames: list[int], windows=(14, 25)) -> None:
    from kfi_core.inference import SCHEDULES, build_schedule, schedule_cost

    header = "strategy".ljust(16) + "".join(f"N={n} W={w}".rjust(14) for w in windows for n in frames)
    print("UNet frame-evaluations per output frame")
    print(header)
    for name in SCHEDULES:
        row = name.ljust(16)
        for w in windows:
            for n in frames:
                c = schedule_cost(build_schedule(name, n, w))
                row += f"{c['evaluations_per_output_frame']:.3f}".rjust(14)
        print(row)


_CHILD = r"""
import json, resource, sys, tempfile, torch
sys.path.insert(0, {root!r})
from kfi_core.model import build_tiny_pipeline_folder
from kfi_core.model import load_kfi_model
from kfi_core.inference import prepare_clip
from kfi_core.inference import inpaint
from kfi_core.inference import PropagateSettings
torch.set_num_threads(1)
n = {n}
model = load_kfi_model(build_tiny_pipeline_folder(tempfile.mkdtemp() + "/m"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
frames = torch.rand(n, 3, 64, 64)
masks = torch.zeros(n, 1, 64, 64); masks[:, :, 16:48, 16:48] = 1
clip = prepare_clip(frames, masks)
out = inpaint(model, clip, PropagateSettings(steps=1), strategy="anchor")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"n": n, "peak_above_model_kb": peak - base, "frames_kb": 3 * frames.numel() * 4 // 1024}}))
"""


def memory_table(frames: list[int]) -> None:
    rows = []
    for n in frames:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD.format(root=str(ROOT), n=n)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\nHost peak memory, anchor schedule on the tiny model (one process per clip length)")
    print(
        "frames".rjust(8)
        + "peak above model".rjust(20)
        + "frame data (in+mask+out)".rjust(28)
        + "ratio to first".rjust(18)
    )
    first = rows[0]["peak_above_model_kb"] or 1
    for r in rows:
        print(
            f"{r['n']:>8}{r['peak_above_model_kb'] / 1024:>17.1f} MB{r['frames_kb'] / 1024:>25.1f} MB"
            f"{r['peak_above_model_kb'] / first:>18.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[25, 100, 250])
    parser.add_argument("--memory", action="store_true", help="also measure host memory (runs the tiny model)")
    args = parser.parse_args()
    cost_table(args.frames)
    if args.memory:
        memory_table(args.frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
