"""Run every KFI benchmark and print every ratio: tiny and mid-size models, CPU.

    KFI_COMFYUI_DIR=/path/to/ComfyUI .venv/bin/python bench/run_all.py [--quick]

Each bench runs in its own process (so peak-memory figures are per process) and measures its
ratios inside that process against a peer on the same model and inputs (see bench/common.py).
Models: ``tiny`` = kfi_core.model.tiny (UNet (32, 64), 1.3 M params); ``mid`` = the same config
widened to (64, 128, 128) with two layers per block (15 M params), built in-process with
random weights (bench/common.py MID_UNET_OVERRIDES). The ComfyUI sampling peer
(bench/comfy_sampler.py) runs on the smallest SVD file ComfyUI detects (UNet 320 channels on
every level, 212 M params; built once in a temp folder) when >= 12 GB of RAM is free. The GPU figures come from
bench/gpu_check.py on a CUDA machine (here only its --dry-run runs, a check of its code path on the tiny model).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: bench/comfy_sampler.py loads a ~1 B-parameter SVD file twice (ComfyUI and KFI), in fp32.
COMFY_SAMPLER_MIN_FREE_GB = 12.0


def comfy_sampler_skip_reason() -> str | None:
    """Why bench/comfy_sampler.py cannot run here (None: it can)."""
    import os

    try:
        import psutil
    except ImportError:
        return "psutil is not installed, so free RAM cannot be checked"
    avail = psutil.virtual_memory().available / 2**30
    if avail < COMFY_SAMPLER_MIN_FREE_GB:
        return (
            f"only {avail:.1f} GB of RAM available, it needs >= {COMFY_SAMPLER_MIN_FREE_GB:.0f} GB (the smallest "
            "SVD file ComfyUI detects has ~0.94 B parameters, loaded twice in fp32)"
        )
    comfy = os.environ.get("KFI_COMFYUI_DIR") or str(Path(__file__).resolve().parents[1] / ".venv" / "comfyui")
    if not (Path(comfy) / "comfy" / "sd.py").exists():
        return f"no ComfyUI at {comfy}; set KFI_COMFYUI_DIR"
    return None


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

    print(
        f"machine: {os.cpu_count()} CPU cores ({cpu_model()}), shared with other jobs; no GPU. "
        f"Python {platform.python_version()}",
        flush=True,
    )
    for size in ("tiny", "mid"):
        run("sampler_step.py", "--size", size, "--reps", reps)
    skip = comfy_sampler_skip_reason()
    if skip:
        print(f"\nComfyUI sampling peer (bench/comfy_sampler.py): SKIPPED: {skip}.", flush=True)
    else:
        run("comfy_sampler.py", "--reps", "3" if args.quick else "5")
    for size in ("tiny", "mid"):
        run("lora_speed.py", "--size", size, "--reps", "5" if args.quick else "11")
    run("schedules.py", "--memory", "--frames", "25", "100", "250")
    run("mask_grow.py", "--frames", "4", "--reps", "3" if args.quick else "5")
    run("comfy_startup.py", "--rounds", "1" if args.quick else "4")
    run("gpu_check.py", "--dry-run", "--summary")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
