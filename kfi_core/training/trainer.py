"""Training a KFI adapter: LoRA + the 12-channel input conv of SVD, in EDM v-prediction; the loop.

Paper (VideoRepainter / KFI supplement A.2-A.4): only the widened input convolution and rank-32 LoRA on
the attention Q/K/V/out projections train; AdamW (beta 0.9 / 0.999) at lr 5e-5; first 45k steps at
320x576, then 5k at 576x1024 with gradient checkpointing; automatic mixed precision; batch 1 per GPU on
16 GPUs. ``configs/kfi_svd_xt.json`` is that recipe, ``configs/tiny.json`` a CPU smoke run.

The pieces: the settings (:mod:`kfi_core.training.config`), the objective and what trains
(:mod:`kfi_core.training.objective`), checkpoints and resume (:mod:`kfi_core.training.checkpoints`), the data
(:mod:`kfi_core.training.data`); this module runs them.

Defaults where the paper is silent (all in :class:`~kfi_core.training.config.TrainConfig`): ``P_mean = 0.7,
P_std = 1.6`` (the SVD image-to-video fine-tuning setting used by the community SVD fine-tuning scripts, e.g.
SVD_Xtend's ``train_svd.py``; more noise than EDM's image default -1.2 / 1.2, as video needs);
noise augmentation ``ln(aug) ~ N(-3.0, 0.5^2)`` (sgm's SVD training, median 0.05; inference uses 0.02);
``cond_dropout_prob = 0.1``; weight decay 0.01 (torch's AdamW default); gradient clipping at norm 1.0;
fps 7 and motion bucket 127 (inference defaults); constant LR, no warmup (``lr_warmup_steps`` and
``lr_decay_fraction``, a linear decay to 10 % at the end, are opt-in; the demo recipe anneals its last 2,000
steps; research/demo_model/NOTES.md, 'Longer adapter runs').

**Determinism.** Every random draw of a sample comes from a generator seeded by ``(seed, stage, sample number)``
(:func:`~kfi_core.training.objective.sample_generator`), so a resumed run repeats the uninterrupted one exactly.

**Fine-tuning.** ``from_adapter`` starts LoRA and conv_in from an adapter file (checked as any adapter load is,
:func:`kfi_core.model.adapter.load_adapter`) instead of LoRA B = 0 and zero new conv_in channels; the optimizer starts
fresh. The file is read only when the run starts; a resumed run takes its weights from the checkpoint.

The script goes in stages: :func:`train` calls :func:`setup` (accelerator, model, trainable parameters,
optimizer), :func:`resume`, the loop per resolution stage (:func:`run_stage`: micro-batches, optimizer step, log,
checkpoint, validation, deadline), and :func:`save_final_adapter`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kfi_core.errors import NonFiniteError, ResumeError, TrainConfigError
from kfi_core.files import atomic_write_text
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.executor import propagate
from kfi_core.inference.settings import PropagateSettings, check_size
from kfi_core.media.video import write_frames
from kfi_core.model.loading import place_model
from kfi_core.training.checkpoints import (
    OPTIMIZER_FILE,
    TRAINABLE_FILE,
    check_resume_compatible,
    checkpoint_state,
    list_checkpoints,
    load_trainable,
    read_checkpoint_state,
    resolve_resume,
    save_checkpoint,
    save_run_adapter,
)
from kfi_core.training.config import StageConfig, TrainConfig, stage_at
from kfi_core.training.data import ClipDataset, StreamSampler, collate_samples
from kfi_core.training.mask_synthesis import MaskConfig
from kfi_core.training.objective import (
    build_unet_inputs,
    compute_loss,
    is_trainable_name,
    load_base_model,
    lr_lambda,
    optimizer_groups,
    sample_generator,
    setup_trainable_unet,
    start_from_adapter,
)
from kfi_core.training.optim_state import load_optimizer, load_scheduler_state

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "train_config.json"


# --------------------------------------------------------------------------- log


class TrainLog:
    """OUT/train_log.jsonl: one JSON object per logged step; on resume, entries after the checkpoint go."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut off by a kill
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, entry: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")


def read_train_log(path: str | os.PathLike) -> list[dict]:
    """The entries of a train_log.jsonl, in order."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- validation


def mask_overlay(frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Frames [F, 3, H, W] with the masked region tinted red (half strength)."""
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return frames * (1 - 0.5 * masks) + red * 0.5 * masks


@torch.no_grad()
def render_validation(model, sample: dict, config: TrainConfig, path: Path, accelerator=None) -> Path:
    """Inpaint the validation clip with the current weights and write a grid video: input+mask | output."""
    kf = int(sample["keyframe_index"])
    clip = prepare_clip(sample["frames"], sample["masks"], keyframe_indices=[kf] if kf >= 0 else [])
    settings = PropagateSettings(
        steps=config.validation_steps,
        seed=config.seed,
        fps=config.fps,
        motion_bucket_id=config.motion_bucket_id,
        noise_aug_strength=0.02 if config.noise_aug_strength is None else config.noise_aug_strength,
    )
    was_training = model.unet.training
    model.unet.eval()
    try:
        ctx = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
        with ctx:
            output = propagate(model, clip, settings)
    finally:
        model.unet.train(was_training)
    grid = torch.cat([mask_overlay(clip.frames.float(), clip.masks.float()), output], dim=3)  # [F, 3, H, 2W]
    return write_frames(grid, path, fps=float(config.fps))


# --------------------------------------------------------------------------- loop


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # data position: samples consumed by all processes in the current stage


@dataclass
class Trainer:
    """What the loop needs; built by :func:`setup`."""

    config: TrainConfig
    accelerator: Any
    model: Any  # KfiModel (unet unwrapped)
    unet: Any  # prepared (maybe DDP-wrapped) UNet
    optimizer: Any
    lr_scheduler: Any
    out: Path
    log: TrainLog
    weight_dtype: torch.dtype
    state: TrainState = field(default_factory=TrainState)
    losses: list[float] = field(default_factory=list)
    grads_checked: bool = False
    deadline: float | None = None  # time.monotonic() after which the run checkpoints and stops
    stopped: bool = False


def setup(config: TrainConfig) -> Trainer:
    """Stages 1-4: accelerator, model, trainable parameters, optimizer and scheduler."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    for name in ("model", "data", "out"):
        if not getattr(config, name):
            raise TrainConfigError(f"--{name}: missing; give the base model, the dataset folder and the output folder.")
    config.check()

    # 1. Accelerator: one process or many (accelerate launch / torchrun), mixed precision only on GPU
    cpu = not torch.cuda.is_available()
    mixed = config.mixed_precision
    if cpu and mixed != "no":
        logger.warning("mixed_precision=%s asked for, but there is no GPU: training in fp32 on CPU", mixed)
        mixed = "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=cpu)
    set_seed(config.seed)  # global RNGs (nothing below draws from them; kept for third-party code)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed]

    # 2. Model: frozen VAE (fp32: SVD's VAE overflows in fp16) and CLIP; UNet frozen except the adapter
    model = load_base_model(config.model)
    for stage in config.stages:
        check_size(model, *stage.resolution)
    place_model(model, dtype=weight_dtype, vae_dtype=torch.float32, device=accelerator.device)

    # 3. Trainable parameters: 12-channel conv_in + LoRA, in fp32 even when the frozen weights are half
    count = setup_trainable_unet(model.unet, config.rank, config.lora_alpha)
    if config.from_adapter:
        start_from_adapter(model, config)
    for param in model.unet.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    model.unet.train()
    logger.info(
        "training %d parameters (LoRA rank %d + conv_in) of %s on %d process(es), %s",
        count,
        config.rank,
        model.variant,
        accelerator.num_processes,
        str(accelerator.device),
    )

    # 4. Optimizer (AdamW) and LR schedule (linear warmup, constant, lr_decay_fraction's decay), per optimizer step
    optimizer = torch.optim.AdamW(
        optimizer_groups(model.unet, config),
        lr=config.lr,
        betas=tuple(config.adam_betas),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    unet, optimizer = accelerator.prepare(model.unet, optimizer)
    # the scheduler is not prepared: accelerate would step it once per process

    out = Path(config.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return Trainer(
        config=config,
        accelerator=accelerator,
        model=model,
        unet=unet,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        out=out,
        log=TrainLog(out / LOG_FILE, accelerator.is_main_process),
        weight_dtype=weight_dtype,
    )


def resume(trainer: Trainer) -> None:
    """Stage 5: load a checkpoint (``config.resume``) or refuse clearly; never restart silently."""
    cfg, acc = trainer.config, trainer.accelerator
    path = resolve_resume(trainer.out, cfg.resume)
    state = read_checkpoint_state(path)
    check_resume_compatible(path, state, cfg, acc.num_processes)
    try:
        load_trainable(acc.unwrap_model(trainer.unet), path / TRAINABLE_FILE)
        load_optimizer(trainer.optimizer, path / OPTIMIZER_FILE)
        load_scheduler_state(trainer.lr_scheduler, state["lr_scheduler"])
    except ResumeError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to read is a damaged checkpoint to the user
        raise ResumeError(
            f"--resume {path}: cannot load the checkpoint ({type(err).__name__}: {err}); it is "
            "damaged. Resume from an earlier checkpoint."
        ) from err
    trainer.state = TrainState(step=int(state["step"]), samples_seen=int(state["samples_seen"]))
    trainer.log.truncate_after(trainer.state.step)
    logger.info("resumed from %s at step %d", path, trainer.state.step)


def stage_dataset(config: TrainConfig, model, stage_index: int, *, validation: bool = False) -> ClipDataset:
    """The training (or, with ``validation``, the validation) clips of stage ``stage_index``."""
    stage = config.stages[stage_index]
    return ClipDataset(
        config.data,
        num_frames=model.num_frames,
        resolution=tuple(stage.resolution),
        frame_stride=config.frame_stride,
        crop_scale=tuple(config.crop_scale),
        keyframe_prob=config.keyframe_prob,
        mask_config=MaskConfig(**config.mask),
        seed=(config.seed, stage_index, 1 if validation else 0),
        cache=config.cache_data,
        track_mask_prob=config.track_mask_prob,
        hole_mask_prob=config.hole_mask_prob,
    )


def _samples_per_step(config: TrainConfig, stage_index: int, world_size: int) -> int:
    stage = config.stages[stage_index]
    return stage.batch_size * stage.grad_accum * world_size


@dataclass
class StageRun:
    """One resolution stage in progress (:func:`run_stage`)."""

    index: int
    stage: StageConfig
    end: int  # the global step at which the stage ends
    per_step: int  # samples consumed per optimizer step, all processes together
    batches: Iterator[dict]
    validation_sample: dict | None = None


def run_stage(trainer: Trainer, stage_index: int, stage_start: int) -> None:
    """Stage 6: optimizer steps of one resolution stage, from ``trainer.state.step`` to the stage's end."""
    if trainer.state.step >= stage_start + trainer.config.stages[stage_index].steps:
        return
    run = start_stage(trainer, stage_index, stage_start)
    while trainer.state.step < run.end:
        t0 = time.perf_counter()
        step_loss, sigmas = accumulate_gradients(trainer, run)  # 6a
        check_gradients_once(trainer)
        optimizer_step(trainer, run)  # 6b
        log_step(trainer, run, step_loss, sigmas, t0)  # 6c
        checkpoint_and_validate(trainer, run)  # 6d, 6e
        if stop_if_out_of_time(trainer, run):  # 6f
            return


def start_stage(trainer: Trainer, stage_index: int, stage_start: int) -> StageRun:
    """Gradient checkpointing as the stage asks, the data position within the stage, and its data loader."""
    cfg, acc, state = trainer.config, trainer.accelerator, trainer.state
    stage = cfg.stages[stage_index]
    unwrapped = acc.unwrap_model(trainer.unet)
    if stage.gradient_checkpointing:
        unwrapped.enable_gradient_checkpointing()
    elif unwrapped.is_gradient_checkpointing:
        unwrapped.disable_gradient_checkpointing()
    per_step = _samples_per_step(cfg, stage_index, acc.num_processes)
    expected_seen = (state.step - stage_start) * per_step
    if state.samples_seen != expected_seen:  # a checkpoint from the previous stage's last step
        state.samples_seen = expected_seen
    dataset = stage_dataset(cfg, trainer.model, stage_index)
    sampler = StreamSampler(state.samples_seen, stage.batch_size, acc.process_index, acc.num_processes)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=stage.batch_size, sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_samples
    )
    run = StageRun(
        index=stage_index, stage=stage, end=stage_start + stage.steps, per_step=per_step, batches=iter(loader)
    )
    logger.info(
        "stage %d%s: steps %d..%d at %dx%d, batch %d x %d process(es) x %d accumulation%s",
        stage_index,
        f" ({stage.name})" if stage.name else "",
        state.step,
        run.end,
        stage.resolution[0],
        stage.resolution[1],
        stage.batch_size,
        acc.num_processes,
        stage.grad_accum,
        ", gradient checkpointing" if stage.gradient_checkpointing else "",
    )
    return run


def accumulate_gradients(trainer: Trainer, run: StageRun) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """6a. The micro-batches of one optimizer step: gradients summed over grad_accum (each loss / grad_accum),
    synced on the last. Returns the step's mean loss and the sigmas drawn."""
    cfg, acc, state, stage = trainer.config, trainer.accelerator, trainer.state, run.stage
    step_loss = torch.zeros((), device=acc.device)
    sigmas = []
    for micro in range(stage.grad_accum):
        batch = next(run.batches)
        first = state.samples_seen + (micro * acc.num_processes + acc.process_index) * stage.batch_size
        gens = [sample_generator(cfg.seed, run.index, first + j) for j in range(stage.batch_size)]
        inputs = build_unet_inputs(trainer.model, batch, cfg, gens, acc.device)
        sync = micro == stage.grad_accum - 1
        ctx = contextlib.nullcontext() if sync else acc.no_sync(trainer.unet)
        with ctx:
            with acc.autocast():
                loss = compute_loss(trainer.unet, inputs, trainer.weight_dtype)
            acc.backward(loss / stage.grad_accum)
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"training step {state.step + 1}: the loss is {float(loss)}; lower --lr, or use "
                "bf16 instead of fp16 (--mixed-precision bf16)."
            )
        step_loss += loss.detach() / stage.grad_accum
        sigmas.append(inputs.sigma.detach())
    return step_loss, sigmas


def check_gradients_once(trainer: Trainer) -> None:
    """Once per run: gradients reach the adapter and nothing else (an AssertionError otherwise: a bug)."""
    if trainer.grads_checked:
        return
    stray = [
        n
        for n, p in trainer.accelerator.unwrap_model(trainer.unet).named_parameters()
        if p.grad is not None and not is_trainable_name(n)
    ]
    if stray:
        raise AssertionError(f"gradients reached frozen parameters, e.g. {stray[:3]}")
    trainer.grads_checked = True


def optimizer_step(trainer: Trainer, run: StageRun) -> None:
    """6b. Clip the gradients, step AdamW and the LR schedule, advance the step and the data position."""
    if trainer.config.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(
            [p for p in trainer.unet.parameters() if p.requires_grad], trainer.config.max_grad_norm
        )
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.state.step += 1
    trainer.state.samples_seen += run.per_step


def log_step(trainer: Trainer, run: StageRun, step_loss: torch.Tensor, sigmas: list[torch.Tensor], t0: float) -> None:
    """6c. Record the step's loss; every log_every steps (and at the stage's end) a train_log.jsonl entry, losses
    and sigmas averaged / gathered over processes."""
    acc, state = trainer.accelerator, trainer.state
    loss_all = acc.gather(step_loss[None]).mean()
    sigma_all = acc.gather(torch.cat(sigmas))
    trainer.losses.append(float(loss_all))
    if state.step % trainer.config.log_every == 0 or state.step == run.end:
        trainer.log.write(
            {
                "step": state.step,
                "stage": run.index,
                "loss": float(loss_all),
                "lr": float(trainer.lr_scheduler.get_last_lr()[0]),
                "sigma_mean": float(sigma_all.mean()),
                "sigma_min": float(sigma_all.min()),
                "sigma_max": float(sigma_all.max()),
                "samples_seen": state.samples_seen,
                "step_time_s": round(time.perf_counter() - t0, 4),
            }
        )
        logger.debug("step %d loss %.5f", state.step, float(loss_all))


def checkpoint_and_validate(trainer: Trainer, run: StageRun) -> None:
    """6d. A checkpoint every checkpoint_every steps; 6e. a validation video every validate_every steps."""
    cfg, acc, step = trainer.config, trainer.accelerator, trainer.state.step
    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
        save_checkpoint(trainer, step, checkpoint_state(trainer, run.index), cfg.keep_checkpoints)
    if cfg.validate_every and step % cfg.validate_every == 0:
        if acc.is_main_process:
            if run.validation_sample is None:
                run.validation_sample = stage_dataset(cfg, trainer.model, run.index, validation=True)[0]
            path = trainer.out / "validation" / f"step-{step:08d}.mp4"
            render_validation(trainer.model, run.validation_sample, cfg, path, acc)
            logger.info("wrote validation video %s", path)
        acc.wait_for_everyone()


def stop_if_out_of_time(trainer: Trainer, run: StageRun) -> bool:
    """6f. Past ``trainer.deadline`` (train(..., deadline=...)): checkpoint now (unless 6d just did) and mark the run
    stopped; the same command with --resume latest continues it. True when stopped."""
    cfg, step = trainer.config, trainer.state.step
    if trainer.deadline is None or time.monotonic() <= trainer.deadline or step >= cfg.total_steps:
        return False
    if not (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
        save_checkpoint(trainer, step, checkpoint_state(trainer, run.index), cfg.keep_checkpoints)
    logger.info("time is up at step %d of %d: checkpoint saved; resume with --resume latest", step, cfg.total_steps)
    trainer.stopped = True
    return True


def save_final_adapter(trainer: Trainer) -> Path | None:
    """Stage 7: OUT/adapter.safetensors (main process), loadable by load_kfi_model(..., adapter=...)."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    path = None
    if acc.is_main_process:
        path = save_run_adapter(
            acc.unwrap_model(trainer.unet), trainer.model, trainer.config, trainer.out / ADAPTER_FILE
        )
    acc.wait_for_everyone()
    return path


def train(config: TrainConfig, deadline: float | None = None) -> Path | None:
    """Train an adapter as ``config`` says; return OUT/adapter.safetensors (None on non-main processes, and
    when ``deadline``, a ``time.monotonic()`` value, passed first: a checkpoint is saved to resume from; the
    deadline is meant for single-process runs such as the demo model's (research/demo_model), each process reads
    its own clock)."""
    trainer = setup(config)
    trainer.deadline = deadline
    if config.resume:
        resume(trainer)
    elif trainer.accelerator.is_main_process and list_checkpoints(trainer.out):
        logger.warning(
            "%s already holds checkpoints; this new run will overwrite them as it goes. Pass --resume "
            "latest to continue the old run instead.",
            trainer.out / "checkpoints",
        )
    if trainer.accelerator.is_main_process and not config.resume:
        trainer.log.truncate_after(0)  # a new run starts a new log
        atomic_write_text(trainer.out / CONFIG_FILE, json.dumps(config.to_dict(), indent=2, default=str))
    while trainer.state.step < config.total_steps:
        stage_index, stage_start = stage_at(config, trainer.state.step)
        run_stage(trainer, stage_index, stage_start)
        if trainer.stopped:
            trainer.accelerator.end_training()
            return None
    path = save_final_adapter(trainer)
    trainer.accelerator.end_training()
    return path
