"""ComfyUI start-up time with and without the KFI pack.

    KFI_COMFYUI_DIR=/path/to/ComfyUI .venv/bin/python bench/comfy_startup.py [--rounds 2]

Starts fresh servers (tests/comfyhost.py: ``main.py --cpu``, own base directory, loopback),
alternating without / with the pack linked into custom_nodes, ``--rounds`` of each, and times
process start -> /object_info answering. Prints the medians' difference (seconds the pack adds;
target < 0.3 s) and their ratio, and, as a second figure, the pack's own line from ComfyUI's
"Import times for custom nodes" log block.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

from common import ROOT

sys.path.insert(0, str(ROOT / "tests"))

IMPORT_LINE = re.compile(r"^\s*([0-9.]+) seconds(?: \(IMPORT FAILED\))?: (.*)$")


def start_once(with_pack: bool, tmp: Path, index: int) -> tuple[float, float | None]:
    from comfyhost import PACK_DIR_NAME, ComfyServer, make_base_dir

    base = make_base_dir(tmp / f"base-{index}-{'pack' if with_pack else 'bare'}")
    if not with_pack:
        (base / "custom_nodes" / PACK_DIR_NAME).unlink()
    server = ComfyServer(base)
    start = time.perf_counter()
    server.start()  # returns once /object_info/KSampler answers
    while True:  # and the full /object_info (every node class, the pack's included)
        try:
            server.get("/object_info", timeout=30)
            break
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    elapsed = time.perf_counter() - start
    server.stop()
    pack_import = None
    for line in server.log_text().splitlines():
        m = IMPORT_LINE.match(line)
        if m and m.group(2).rstrip("/").endswith(PACK_DIR_NAME):
            pack_import = float(m.group(1))
    return elapsed, pack_import


def measure(rounds: int) -> list[str]:
    try:
        from comfyhost import host_dir

        host_dir()
    except Exception as err:  # noqa: BLE001 - a bench reports why it skips
        return [f"ComfyUI start-up: skipped, no host ({err})"]
    bare, pack, imports = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            for with_pack in (False, True) if i % 2 == 0 else (True, False):
                elapsed, imp = start_once(with_pack, Path(tmp), 2 * i + with_pack)
                (pack if with_pack else bare).append(elapsed)
                if with_pack and imp is not None:
                    imports.append(imp)
    added = statistics.median(pack) - statistics.median(bare)
    pairs = sorted(p - b for p, b in zip(pack, bare))
    lines = [
        f"ComfyUI start-up to /object_info: pack adds {added:+.2f} s (pairwise {pairs[0]:+.2f}..{pairs[-1]:+.2f}, "
        f"n={rounds}; ratio {statistics.median(pack) / statistics.median(bare):.3f}x)  target < 0.3 s"
    ]
    if imports:
        lines.append(
            f"ComfyUI 'Import times for custom nodes' line for the pack: median {statistics.median(imports):.2f} s "
            f"(ComfyUI rounds to 0.1 s; n={len(imports)})"
        )
    else:
        lines.append("ComfyUI 'Import times for custom nodes': no line for the pack found in the log")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for line in measure(args.rounds):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
