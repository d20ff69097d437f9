"""One GPU check of KFI at full size, every figure against its peer in the same process (docs/PERFORMANCE.md).

    timeout 540 python bench/gpu_check.py --write-docs --json-out gpu_check.json   # one H100 or H200, ~7 min
    python bench/gpu_check.py --dry-run [--json-out PATH] [--summary]   # the same code on CPU, tiny model (tests)

Nothing is downloaded: svd-xt's architecture with random weights is written as one single file by the converter's
``save_single_file`` with a fresh adapter (init-adapter's calls) and loaded back by ``load_kfi_model``. Sections
(``--only``), in run order: a s/step KFI / diffusers; b peak memory at 25, 100, 250 frames; offload; c a 1920x1080
clip; d plan / measured for b, offload and c; e a training step; f torch.compile / eager. A failing section records
its error and the rest run; ``--budget-s`` skips what no longer fits; JSON and docs are rewritten after each section.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import inspect
import json
import logging
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kfi_core import __version__
from kfi_core.inference import PropagateSettings, plan_memory, prepare_clip
from kfi_core.inference.window import sample_window_latents
from kfi_core.jobs import inpaint_clip
from kfi_core.model.adapter import save_adapter
from kfi_core.model.conv_in import expand_conv_in
from kfi_core.model.loading import DTYPES, load_kfi_model, optimize_unet, place_model, variant_for
from kfi_core.model.lora import SVD_XT_UNET_CONFIG, add_lora, merge_lora, unmerge_lora
from kfi_core.model.single_file import save_single_file
from kfi_core.model.tiny import build_tiny_components
from kfi_core.training import trainer as tr
from kfi_core.training.config import StageConfig, TrainConfig

GIB = 2**30
ORDER = ("a", "b", "offload", "c", "d", "e", "f")
#: seconds a section needs at least on an H100 (a ~75, b ~70, c ~55, e ~30, f ~60 + compiling); skipped with less left
NEEDS_S = {"a": 40, "b": 40, "d": 1, "offload": 10, "c": 30, "e": 20, "f": 60}
BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
COMMAND = "timeout 540 python bench/gpu_check.py --write-docs --json-out gpu_check.json"
PHASES = ("image_encoder", "vae_encode", "unet_step", "vae_decode")
VIT_H = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120)
VIT_H.update(projection_dim=1024, patch_size=14, image_size=224, hidden_act="gelu", layer_norm_eps=1e-5)
SVD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2)
SVD_VAE.update(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=768, scaling_factor=0.18215)


@dataclass(frozen=True)
class Sizes:
    frames: int = 25  # the model's window
    size: tuple = (576, 1024)
    box: tuple = (0.3, 0.7, 0.3, 0.7)  # the mask: (y0, y1, x0, x1) as fractions of the frame
    dtypes: tuple = ("bf16", "fp16")  # a; the first also for f, the last for b, c, d and offload
    a_steps: int = 6  # per run of a and f; reps interleaved rounds after one warm-up round
    reps: int = 2
    lengths: tuple = (25, 100, 250)  # b: the first with ``steps`` (wall time), the others one step
    steps: int = 25  # b's first length
    big: tuple = (60, 1080, 1920)  # c: frames, height, width, with clip_steps (its windows dominate the run time)
    clip_steps: int = 10
    big_box: tuple = (0.45, 0.65, 0.55, 0.7)
    train: tuple = (14, 320, 576)  # e: frames, height, width
    train_steps: int = 3


#: the dry run: the tiny model (window 4), 32x32, 2x the window for 250 frames, a 48x40 clip for 1920x1080, fp32
DRY = Sizes(frames=4, size=(32, 32), dtypes=("fp32",), a_steps=3, reps=1, lengths=(4, 8), steps=2, big=(6, 40, 48))
DRY = replace(DRY, clip_steps=1, train=(4, 32, 32), train_steps=2)


@dataclass
class Run:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    tmp: Path
    file: Path | None = None
    adapter: Path | None = None
    models: dict = field(default_factory=dict)  # "kfi" / "stock" -> KfiModel on the device
    measured: list = field(default_factory=list)  # (row, plan) of every memory run, for d
    report: dict = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.dry, self.cuda = self.args.dry_run, self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


log = lambda run, text: print(f"[gpu_check {run.elapsed():5.0f} s] {text}", file=sys.stderr, flush=True)
sync = lambda run: torch.cuda.synchronize() if run.cuda else None
gib = lambda value: None if value is None else round(value / GIB, 3)
ratio = lambda a, b: None if a is None or b is None or not b else round(a / b, 4)
fmt = lambda value, unit="": "n/a" if value is None else f"{value:.3g}{unit}"
dig = lambda value, *keys: functools.reduce(lambda v, k: v.get(k) if isinstance(v, dict) else None, keys, value)


def environment(run: Run) -> dict:
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    env.update(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__)
    env.update(transformers=transformers.__version__, kfi_core=__version__, mode="dry-run" if run.dry else "gpu")
    env.update(device="cpu (dry run: tiny model)", memory_gib=None, cuda=torch.version.cuda)
    if run.cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(), memory_gib=gib(props.total_memory))
        env.update(capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
        env.update(tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def random_components(run: Run) -> dict:
    """svd-xt's three networks with random weights, built on the device (the tiny ones on CPU in a dry run)."""
    if run.dry:
        parts = build_tiny_components(num_frames=run.sizes.frames)
        return {k: parts[k] for k in ("unet", "vae", "image_encoder")}
    torch.manual_seed(0)
    with torch.device(run.device), torch.no_grad():
        parts = {"unet": diffusers.UNetSpatioTemporalConditionModel(**SVD_XT_UNET_CONFIG)}
        parts["vae"] = diffusers.AutoencoderKLTemporalDecoder(**SVD_VAE)
        parts["image_encoder"] = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VIT_H))
        q = parts["vae"].quant_conv  # SVD's VAE has no quant_conv: the identity, as in its converted weights
        q.weight.copy_(torch.eye(q.weight.shape[0]).view_as(q.weight))
        q.bias.zero_()
    return parts


def setup(run: Run) -> dict:
    """Write the single file and a fresh adapter (the converter's and init-adapter's library calls), load one back."""
    t0 = time.perf_counter()
    parts = random_components(run)
    params = {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for k, m in parts.items()}
    for module in parts.values():  # to the host in fp16 (4.5 GiB at full size): safetensors writes host memory
        torch.nn.Module.to(module, device="cpu", dtype=torch.float16)
    t1 = time.perf_counter()
    frames, unet = run.sizes.frames, parts["unet"]
    run.file = save_single_file(parts, run.tmp / "svd_xt_random.safetensors", num_frames=frames)
    t2 = time.perf_counter()
    expand_conv_in(unet)
    add_lora(unet, rank=32)
    variant = variant_for(unet.config, frames)
    run.adapter = save_adapter(unet, run.tmp / "adapter.safetensors", base_variant=variant, num_frames=frames)
    t3 = time.perf_counter()
    model = load(run, "kfi", run.sizes.dtypes[0])
    out = dict(params_M=params, build_s=round(t1 - t0, 1), write_s=round(t2 - t1, 1), variant=variant)
    out.update(file_gib=gib(run.file.stat().st_size), file_dtype="fp16", in_channels=model.in_channels)
    out.update(load_kfi_s=round(time.perf_counter() - t3, 1), lora_merged=True)
    out.update(attention=sorted({type(p).__name__ for p in model.unet.attn_processors.values()}))
    return out


def load(run: Run, kind: str, dtype: str, alone: bool = True):
    """The ``kind`` model ("kfi": the adapter, LoRA merged; "stock") on the device in ``dtype``; with ``alone`` the
    other cached model leaves the device first. A cached model changes dtype by ``place_model``."""
    if alone:
        release(run, *(k for k in run.models if k != kind))
    model = run.models.get(kind)
    if model is None:
        adapter = run.adapter if kind == "kfi" else None
        model = load_kfi_model(run.file, adapter=adapter, merge_lora=bool(adapter), dtype=dtype, device=run.device)
        run.models[kind] = model
    elif model.dtype != DTYPES[dtype]:
        place_model(model, dtype=DTYPES[dtype], vae_dtype=model.vae_dtype, device=run.device)
    return model


def release(run: Run, *kinds: str) -> None:
    for kind in list(kinds):
        run.models.pop(kind, None)
    gc.collect()
    if run.cuda:
        torch.cuda.empty_cache()


@contextlib.contextmanager
def peak_meter(run: Run, model=None):
    """Yields a dict that gets the peak device memory of the block, in all and per phase (hooks on the model's four
    components read and reset the allocator's peak as each forward starts and ends); None on CPU."""
    peaks, calls, result = {}, dict.fromkeys(PHASES, 0), {}
    modules = () if model is None else (model.image_encoder, model.vae.encoder, model.unet, model.vae.decoder)

    def take(phase: str | None = None, *_) -> None:
        calls[phase] = calls.get(phase, 0) + 1
        if run.cuda:
            allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            for key, value in (("total", allocated), ("reserved", reserved), (phase or "total", allocated)):
                peaks[key] = max(peaks.get(key, 0), value)
            torch.cuda.reset_peak_memory_stats()

    release(run)  # the reserved figure starts from what is live
    if run.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    hooks = [m.register_forward_pre_hook(lambda *_: take()) for m in modules]
    hooks += [m.register_forward_hook(functools.partial(take, p)) for p, m in zip(PHASES, modules)]
    try:
        yield result
    finally:
        for hook in hooks:
            hook.remove()
        take()
        result.update(peak_allocated_gib=gib(peaks.get("total")), peak_reserved_gib=gib(peaks.get("reserved")))
        if modules:
            result.update(phases_gib={p: gib(peaks.get(p)) for p in PHASES}, phase_calls={p: calls[p] for p in PHASES})


def step_timer(run: Run):
    """A step callback (KFI's, and diffusers' callback_on_step_end) stamping the time after a device sync."""
    stamps = []

    def callback(*args, **kwargs):
        sync(run)
        stamps.append(time.perf_counter())
        return args[3] if len(args) >= 4 else {}

    callback.gaps = lambda: [b - a for a, b in zip(stamps, stamps[1:])]
    return callback


def kfi_gaps(run: Run, model, clip, steps: int) -> list[float]:
    """KFI's steps of one window as every window runs them (condition, denoiser, sampler; not the decode)."""
    timer = step_timer(run)
    sample_window_latents(model, clip, PropagateSettings(steps=steps), callback=timer)
    return timer.gaps()


def interleave(candidates: dict, reps: int, peer: str) -> dict:
    """A warm-up round, ``reps`` alternating rounds; per candidate median s/step, per-run medians, ratios to peer's."""
    names, gaps = list(candidates), {name: [] for name in candidates}
    for r in range(1 + reps):
        for name in names if r % 2 == 0 else names[::-1]:
            run_gaps = candidates[name]()
            if r:
                gaps[name].append(run_gaps)
    out = {}
    for name, runs in gaps.items():
        pooled, per_run = [g for rg in runs for g in rg], [round(statistics.median(g), 5) for g in runs]
        out[name] = dict(s_per_step=round(statistics.median(pooled), 5), n_gaps=len(pooled), per_run=per_run)
    for fig in out.values():
        fig["pairwise_to_peer"] = [ratio(a, b) for a, b in zip(fig["per_run"], out[peer]["per_run"])]
    return out


def clip_tensors(frames: int, shape: tuple, box: tuple):
    """Random frames [F, 3, H, W] in 0..1 (at most 25 distinct, repeated) and masks [F, 1, H, W], 1 in ``box``."""
    base = torch.rand(min(frames, 25), 3, *shape, generator=torch.Generator().manual_seed(0))
    video = base.repeat(-(-frames // base.shape[0]), 1, 1, 1)[:frames]
    masks = torch.zeros(frames, 1, *shape)
    y0, y1, x0, x1 = (round(f * d) for f, d in zip(box, (shape[0], shape[0], shape[1], shape[1])))
    masks[:, :, y0:y1, x0:x1] = 1.0
    return video, masks


def section_a(run: Run) -> dict:
    out = {dtype: speed_vs_diffusers(run, dtype) for dtype in run.sizes.dtypes}  # stock stays, changing dtype
    release(run, "stock")
    what = f"{run.sizes.frames} frames {run.sizes.size[0]}x{run.sizes.size[1]}, CFG"
    return dict(out, lines=[[f"(a) s/step KFI / diffusers, {d}, {what}", x["line"]] for d, x in out.items()])


def speed_vs_diffusers(run: Run, dtype: str) -> dict:
    s = run.sizes
    kfi, stock = load(run, "kfi", dtype, alone=False), load(run, "stock", dtype, alone=False)
    parts = {k: getattr(stock, k) for k in ("vae", "image_encoder", "unet", "feature_extractor")}
    scheduler = diffusers.EulerDiscreteScheduler.from_config(stock.scheduler_config)
    pipe = diffusers.StableVideoDiffusionPipeline(scheduler=scheduler, **parts)
    pipe.set_progress_bar_config(disable=True)
    clip = prepare_clip(*clip_tensors(s.frames, s.size, s.box))
    image = PIL.Image.fromarray((clip.frames[0].permute(1, 2, 0) * 255).round().byte().numpy())
    call = dict(height=s.size[0], width=s.size[1], num_frames=s.frames, num_inference_steps=s.a_steps)
    call.update(min_guidance_scale=1.0, max_guidance_scale=3.0, output_type="latent")

    def stock_pipe() -> list[float]:
        timer = step_timer(run)
        pipe(image, generator=torch.Generator().manual_seed(0), callback_on_step_end=timer, **call)
        return timer.gaps()

    def unmerged() -> list[float]:
        unmerge_lora(kfi.unet)
        try:
            return kfi_gaps(run, kfi, clip, s.a_steps)
        finally:
            merge_lora(kfi.unet)

    cands = {"kfi": lambda: kfi_gaps(run, kfi, clip, s.a_steps), "kfi_unmerged": unmerged, "diffusers": stock_pipe}
    out = interleave(cands, s.reps, peer="diffusers")
    base = out["diffusers"]["s_per_step"]
    out.update(ratio_kfi_to_diffusers=ratio(out["kfi"]["s_per_step"], base), dtype=dtype, steps=s.a_steps)
    out.update(ratio_kfi_unmerged_to_diffusers=ratio(out["kfi_unmerged"]["s_per_step"], base), reps=s.reps)
    out["line"] = f"**{fmt(out['ratio_kfi_to_diffusers'], 'x')}** (KFI {fmt(out['kfi']['s_per_step'], ' s')}, "
    out["line"] += f"diffusers {fmt(base, ' s')}; LoRA unmerged {fmt(out['ratio_kfi_unmerged_to_diffusers'], 'x')})"
    return out


def measure_inpaint(run: Run, model, label: str, frames: int, shape: tuple, box, steps: int, offload="none", **job):
    """One ``inpaint_clip`` (anchor schedule) of ``frames`` frames of ``shape`` (height, width) under peak_meter;
    ``job``: inpaint_clip's working ``size`` and ``crop``. The plan of the same settings is kept for d."""
    video, masks = clip_tensors(frames, shape, box)
    work = job.get("size") or shape
    plan = plan_memory(model, frames, work[0], work[1], dtype=model.dtype, offload=offload)
    with peak_meter(run, model) as memory:
        t0 = time.perf_counter()
        out, _ = inpaint_clip(model, video, masks, settings=PropagateSettings(steps=steps), strategy="anchor", **job)
        sync(run)
        wall = time.perf_counter() - t0
    row = dict(run=f"{label}, {frames} frames", frames=frames, size=list(shape), work_size=list(work), steps=steps)
    row.update(wall_s=round(wall, 3), dtype=str(model.dtype).replace("torch.", ""), offload=offload)
    row.update(memory, finite=bool(out.isfinite().all()))
    run.measured.append((row, plan.to_dict()))
    figure = f"{fmt(wall, ' s')}, peak {fmt(row['peak_allocated_gib'])} GiB (reserved {fmt(row['peak_reserved_gib'])})"
    row["line"] = [f"{label}: {frames} frames {shape[0]}x{shape[1]}, {steps} steps, {row['dtype']}", figure]
    log(run, f"  {row['line'][0]}: {row['line'][1]}")
    return row


def section_b(run: Run) -> dict:
    s, model = run.sizes, load(run, "kfi", run.sizes.dtypes[-1])
    rows = [measure_inpaint(run, model, "(b) anchor", n, s.size, s.box, s.steps) for n in s.lengths[:1]]
    rows += [measure_inpaint(run, model, "(b) anchor", n, s.size, s.box, 1) for n in s.lengths[1:]]
    out = dict(runs=rows, lines=[r["line"] for r in rows], schedule="anchor", dtype=s.dtypes[-1])
    out["peak_ratio_last_to_first"] = ratio(rows[-1]["peak_allocated_gib"], rows[0]["peak_allocated_gib"])
    item = f"(b) peak {s.lengths[-1]} / {s.lengths[0]} frames"
    out["lines"].append([item, fmt(out["peak_ratio_last_to_first"], "x")])
    return out


def section_c(run: Run) -> dict:
    s, model = run.sizes, load(run, "kfi", run.sizes.dtypes[-1])
    args = (s.big[0], s.big[1:], s.big_box, s.clip_steps)
    work = measure_inpaint(run, model, f"(c) working size {s.size[0]}x{s.size[1]}", *args, size=s.size)
    crop = measure_inpaint(run, model, "(c) crop mode", *args, size=s.size, crop="mask")
    return dict(working_size=work, crop=crop, lines=[work["line"], crop["line"]])


def section_d(run: Run) -> dict:
    s = run.sizes
    if not run.measured:
        measure_inpaint(run, load(run, "kfi", s.dtypes[-1]), "(d) own run", s.lengths[0], s.size, s.box, 1)
    rows, lines = [], []
    for row, plan in run.measured:
        phases = {p: dict(estimate_gib=gib(plan["phases"][p]), measured_gib=row["phases_gib"][p]) for p in PHASES}
        total = dict(estimate_gib=gib(plan["peak"]), measured_gib=row["peak_allocated_gib"], phase=plan["peak_phase"])
        for fig in (total, *phases.values()):
            fig["ratio"] = ratio(fig["estimate_gib"], fig["measured_gib"])
        rows.append(dict(run=row["run"], offload=row["offload"], total=total, phases=phases))
        each = ", ".join(f"{p} {fmt(f['ratio'], 'x')}" for p, f in phases.items())
        lines.append([f"(d) plan / measured, {row['run']}", f"{fmt(total['ratio'], 'x')} ({each})"])
    return dict(runs=rows, lines=lines, note="ratio = plan_memory's estimate / measured max_memory_allocated")


def section_offload(run: Run) -> dict:
    if "offload" not in inspect.signature(place_model).parameters:
        note = "not available: kfi_core.model.place_model has no offload keyword"
        return dict(available=False, note=note, lines=[["(offload) model", note]])
    s, model = run.sizes, load(run, "kfi", run.sizes.dtypes[-1])
    place = dict(dtype=model.dtype, vae_dtype=model.vae_dtype, device=run.device)
    place_model(model, offload="model", **place)
    try:
        row = measure_inpaint(run, model, "(offload) model", s.lengths[0], s.size, s.box, 1, offload="model")
    finally:
        place_model(model, offload="none", **place)
    return dict(available=True, mode="model", run=row, lines=[row["line"]])


def section_e(run: Run) -> dict:
    """Training steps by the trainer's setup, start_stage (checkpointing, data), accumulate_gradients, optimizer_step"""
    release(run, *run.models)
    (frames, *size), steps = run.sizes.train, run.sizes.train_steps
    folder, rng = run.tmp / "data" / "clip0", np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(frames):
        PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    stage = StageConfig(steps=steps, resolution=tuple(size), gradient_checkpointing=True)
    config = TrainConfig(model=str(run.file), data=str(folder.parent), out=str(run.tmp / "train"), stages=[stage])
    config.mixed_precision, config.checkpoint_every = "bf16", 0  # fp32 on CPU (the trainer says so)
    trainer = tr.setup(config)
    trainer.model.num_frames = frames  # svd's window on svd-xt's weights: the same UNet config, num_frames 14
    stage_run, times = tr.start_stage(trainer, 0, 0), []
    with peak_meter(run) as memory:
        for _ in range(steps):
            t0 = time.perf_counter()
            loss, _ = tr.accumulate_gradients(trainer, stage_run)
            tr.check_gradients_once(trainer)
            tr.optimizer_step(trainer, stage_run)
            sync(run)
            times.append(time.perf_counter() - t0)
    checkpointing = bool(trainer.accelerator.unwrap_model(trainer.unet).is_gradient_checkpointing)
    precision = str(trainer.weight_dtype).replace("torch.", "")
    out = dict(frames=frames, size=size, steps=steps, gradient_checkpointing=checkpointing, weight_dtype=precision)
    out.update(first_step_s=round(times[0], 3), s_per_step=round(statistics.median(times[1:] or times), 3))
    out.update(memory, last_loss=round(float(loss), 5))
    item = f"(e) training step, {frames} frames {size[0]}x{size[1]}, checkpointing {checkpointing}, {precision}"
    out["lines"] = [[item, f"{fmt(out['s_per_step'], ' s/step')}, peak {fmt(out['peak_allocated_gib'], ' GiB')}"]]
    return out


def section_f(run: Run) -> dict:
    s, dtype, real_compile, warnings = run.sizes, run.sizes.dtypes[0], torch.compile, []
    backend = "eager" if run.dry else "inductor"  # dry: dynamo without inductor, whose codegen takes minutes on CPU
    model, clip = load(run, "kfi", dtype), prepare_clip(*clip_tensors(s.frames, s.size, s.box))
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # optimize_unet's fallback to eager
    logging.getLogger("kfi_core.model.loading").addHandler(handler)
    try:
        torch.compile = functools.partial(real_compile, backend=backend)
        try:
            optimize_unet(model, compile_unet=True)
        finally:
            torch.compile = real_compile
        unet, compiled, t0 = model.unet, model.unet.forward, time.perf_counter()
        kfi_gaps(run, model, clip, 2)  # compiles on the first call
        first_call = time.perf_counter() - t0

        def eager() -> list[float]:
            unet.__dict__.pop("forward", None)  # the class's own forward
            try:
                return kfi_gaps(run, model, clip, s.a_steps)
            finally:
                unet.forward = compiled

        out = interleave({"compiled": lambda: kfi_gaps(run, model, clip, s.a_steps), "eager": eager}, s.reps, "eager")
    finally:
        logging.getLogger("kfi_core.model.loading").removeHandler(handler)
        release(run, "kfi")  # the compiled wrapper leaves with the model
    out.update(ratio_compiled_to_eager=ratio(out["compiled"]["s_per_step"], out["eager"]["s_per_step"]))
    out.update(first_call_s=round(first_call, 1), backend=backend, dtype=dtype, warnings=warnings[:3])
    out.update(fell_back_to_eager=any("torch.compile" in w for w in warnings))
    back = ", fell back to eager" if out["fell_back_to_eager"] else ""
    figure = f"**{fmt(out['ratio_compiled_to_eager'], 'x')}** (first call {out['first_call_s']} s{back})"
    out["lines"] = [[f"(f) torch.compile / eager, {dtype}, backend {backend}", figure]]
    return out


SECTIONS = dict(a=section_a, b=section_b, c=section_c, d=section_d, offload=section_offload, e=section_e, f=section_f)


def goals(report: dict) -> list[dict]:
    sec, env, dry = report["sections"], report["env"], report["env"]["mode"] == "dry-run"
    a = [dig(sec, "a", d, "ratio_kfi_to_diffusers") for d in report["sizes"]["dtypes"]]
    first = (dig(sec, "b", "runs") or [{}])[0]
    table = [
        ("kfi_step_vs_diffusers", "(a) KFI s/step / diffusers, LoRA merged, every dtype", 1.0, None if None in a else max(a), ""),
        ("memory_250_vs_25", "(b) peak at 250 frames / at 25", 1.05, dig(sec, "b", "peak_ratio_last_to_first"), ""),
        ("fits_24gb_fp16", "(b) 25 frames 576x1024 fp16, no offload: peak reserved, GiB", 24.0, first.get("peak_reserved_gib"), ""),
        ("fits_12gb_model_offload", "(offload) the same with offload model: peak reserved, GiB", 12.0,
         dig(sec, "offload", "run", "peak_reserved_gib"), dig(sec, "offload", "note") or ""),
        ("clip_10s_h100", "(b) 25 frames 576x1024, 25 steps, fp16: wall time, s, on an H100", 10.0, first.get("wall_s"), "" if "H100" in str(env["device"]) else f"measured on {env['device']}"),
    ]  # fmt: skip
    out = []
    for name, what, target, value, note in table:
        passed = None if dry or value is None else bool(value <= target)
        note = "dry run: code path only, not a GPU figure" if dry else note or ("not measured" if value is None else "")
        out.append(dict(goal=name, what=what, target=f"<= {target:g}", value=value, passed=passed, note=note))
    return out


def figure_rows(report: dict) -> list:
    """(item, figure) pairs of every section that ran: the docs table and the --summary lines."""
    rows = []
    for name, sec in report["sections"].items():
        if sec["status"] == "ok":
            rows += [tuple(line) for line in sec.get("lines", [])]
        else:
            rows.append((f"({name})", f"{sec['status']}: {sec.get('error') or sec.get('reason')}"))
    return rows


def render_docs(report: dict) -> str:
    env = report["env"]
    if env["mode"] == "dry-run":
        head = "**No GPU has been lent yet: there are no GPU figures.** Below is a dry run on CPU with the tiny model"
        head += f" (it checks the code path only). On one H100 or H200 run:\n\n```bash\n{COMMAND}\n```"
    else:
        head = f"Measured on **{env['device']}** ({env['memory_gib']} GiB), {env['date']}: torch {env['torch']}, "
        head += f"diffusers {env['diffusers']}, CUDA {env['cuda']}; `{COMMAND}` ({report['elapsed_s']:.0f} s)."
    if "interrupted" in report:
        head += f"\n\nThe run was cut short: {report['interrupted']}."
    lines = [head, "", "| Item | Figure |", "|---|---|"] + [f"| {i} | {f} |" for i, f in figure_rows(report)]
    lines += ["", "| Goal | Target | Measured | Pass |", "|---|---|---|---|"]
    for g in report["goals"]:
        verdict = {True: "pass", False: "**fail**", None: "-"}[g["passed"]] + (f" ({g['note']})" if g["note"] else "")
        lines.append(f"| {g['what']} | {g['target']} | {fmt(g['value'])} | {verdict} |")
    return "\n".join(lines)


def save(run: Run) -> None:
    """The JSON (``--json-out``) and, with ``--write-docs``, the table between the markers of ``--docs``."""
    run.report.update(elapsed_s=round(run.elapsed(), 1), goals=goals(run.report))
    if run.args.json_out:
        Path(run.args.json_out).write_text(json.dumps(run.report, indent=2, default=str) + "\n")
    if run.args.write_docs:
        write_docs(Path(run.args.docs), run.report)


def write_docs(path: Path, report: dict) -> None:
    doc = path.read_text()
    begin, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    path.write_text(doc[:begin] + "\n" + render_docs(report) + "\n" + doc[end:])


def guarded(step, run: Run) -> dict:
    """``step(run)``'s dict with status "ok", or "error" and the error (an OOM must not stop the rest); seconds."""
    t0 = time.perf_counter()
    try:
        out = dict(status="ok", **step(run))
    except Exception as err:  # noqa: BLE001 - recorded, see above
        traceback.print_exc(file=sys.stderr)
        out = dict(status="error", error=f"{type(err).__name__}: {str(err).strip()[:500]}")
        release(run, *run.models)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_section(run: Run, name: str) -> dict:
    left, need = run.args.budget_s - run.elapsed(), 0 if run.dry else NEEDS_S[name]
    if run.report["setup"]["status"] != "ok":
        return dict(status="skipped", reason="the setup failed (no model files)")
    if left < need:
        return dict(status="skipped", reason=f"time budget: {left:.0f} s of --budget-s left, it needs ~{need} s")
    return guarded(SECTIONS[name], run)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="the same code on CPU with the tiny model (tests)")
    p.add_argument("--only", default=",".join(ORDER), help=f"comma-separated sections of {','.join(ORDER)}")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip sections once this much time is spent")
    p.add_argument("--json-out", default=None, help="also write the JSON here (rewritten after each section)")
    p.add_argument("--write-docs", action="store_true", help="replace the gpu_check table of --docs")
    p.add_argument("--docs", default=str(ROOT / "docs" / "PERFORMANCE.md"), help="the Markdown file to write")
    p.add_argument("--summary", action="store_true", help="print one line per figure instead of the JSON")
    p.add_argument("--from-json", default=None, help="only write --docs' table from a saved report (a GPU's JSON)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(ORDER))
    if unknown:
        p.error(f"--only: unknown sections {unknown}; choose from {', '.join(ORDER)}")
    if (args.write_docs or args.from_json) and BEGIN not in Path(args.docs).read_text():
        p.error(f"--docs {args.docs}: no {BEGIN} ... {END} markers to replace")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:  # e.g. the JSON a GPU machine sent back: its --write-docs wrote to that machine's copy
        write_docs(Path(args.docs), json.loads(Path(args.from_json).read_text()))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device. Run it on a GPU machine, or pass --dry-run for the CPU check.")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `timeout`: save what was measured, then stop
    if args.dry_run:
        torch.set_num_threads(1)  # as the CPU benches: on a shared machine tiny ops lose to thread hand-offs
    sizes, device = (DRY, torch.device("cpu")) if args.dry_run else (Sizes(), torch.device("cuda"))
    with tempfile.TemporaryDirectory(prefix="kfi_gpu_check_") as tmp:
        run = Run(args=args, sizes=sizes, device=device, tmp=Path(tmp))
        run.report = dict(script="bench/gpu_check.py", env=environment(run), sizes=asdict(sizes), sections={})
        run.report.update(budget_s=args.budget_s, selected=args.sections, setup=dict(status="not run"))
        try:
            run.report["setup"] = guarded(setup, run)
            log(run, f"setup: {run.report['setup']}")
            for name in (n for n in ORDER if n in args.sections):
                run.report["sections"][name] = run_section(run, name)
                log(run, f"section {name}: {run.report['sections'][name]['status']}")
                save(run)
        except KeyboardInterrupt:
            run.report["interrupted"] = f"stopped by an interrupt at {run.elapsed():.0f} s"
        save(run)
    report = run.report
    if args.summary:
        print("\n".join(f"{item}: {figure}" for item, figure in figure_rows(report)))
        print("\n".join(f"goal {g['goal']}: {fmt(g['value'])} {g['target']}: {g['passed']}" for g in report["goals"]))
    else:
        print(json.dumps(report, indent=2, default=str))
    failed = any(s["status"] == "error" for s in report["sections"].values()) or "interrupted" in report
    return 1 if failed or report["setup"]["status"] != "ok" else 0


if __name__ == "__main__":
    raise SystemExit(main())
