"""Run every KFI benchmark and print every ratio: tiny and mid-size models, CPU.

    KFI_COMFYUI_DIR=/path/to/ComfyUI .venv/bin/python bench/run_all.py [--quick]

Each bench runs in its own process (so peak-memory figures are per process) and measures its
ratios inside that process against a peer on the same model and inputs (see bench/common.py).
Models: ``tiny`` = kfi_core.tiny (UNet (32, 64), 1.3 M params); ``mid`` = the same config
widened to (64, 128, 128) with two layers per block (15 M params), built in-process with
random weights (bench/common.py MID_UNET_OVERRIDES). The GPU figures come from
bench/gpu_fullsize.py on a CUDA machine (here only its --dry-run runs).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

COMFY_SAMPLER_PEER_REASON = (
    "ComfyUI sampling peer (SVD_img2vid_Conditioning + KSampler): NOT MEASURED. ComfyUI detects SVD only from a "
    "full-width checkpoint (model_channels 320, ViT-H CLIP vision, full VAE: ~2.3 B params, ~9 GB fp32 on disk); "
    "building, converting and loading it twice (KFI and ComfyUI) did not fit this task's time box on 2 shared "
    "cores. See docs/PERFORMANCE.md for how to add it.")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(script: str, *args: str) -> None:
    cmd = [sys.executable, str(HERE / script), *args]
    print(f"\n$ python bench/{script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        print(line, flush=True)
    if proc.returncode:
        print(f"  FAILED (exit {proc.returncode}):\n" + "\n".join(proc.stderr.splitlines()[-15:]), flush=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args()
    reps = "3" if args.quick else "7"
    import os

    print(f"machine: {os.cpu_count()} CPU cores ({cpu_model()}), shared with other jobs; no GPU. "
          f"Python {platform.python_version()}", flush=True)
    for size in ("tiny", "mid"):
        run("sampler_step.py", "--size", size, "--reps", reps)
    print("\n" + COMFY_SAMPLER_PEER_REASON, flush=True)
    for size in ("tiny", "mid"):
        run("lora_speed.py", "--size", size, "--reps", "5" if args.quick else "11")
    run("schedules.py", "--memory", "--frames", "25", "100", "250")
    run("comfy_startup.py", "--rounds", "1" if args.quick else "4")
    run("gpu_fullsize.py", "--dry-run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
