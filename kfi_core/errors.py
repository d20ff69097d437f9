"""Exceptions of the KFI library, named for the user's problem.

Every message says which input is wrong, what is wrong with it and how to fix it.
``KfiError`` is the root; the CLI turns it into a message and exit code 2, and ComfyUI
shows its text in the node's error dialog. Bad-value errors also subclass ``ValueError``
(as peft's do) so that callers catching ``ValueError`` keep working.
"""


class KfiError(Exception):
    """Base class of every error KFI raises on purpose."""


class InputMismatchError(KfiError, ValueError):
    """Frames, masks or keyframes disagree in count, size or layout."""


class KeyframeError(KfiError, ValueError):
    """A keyframe index is out of range, repeated, or its image does not fit the clip."""


class UnsupportedSizeError(KfiError, ValueError):
    """A frame size or frame count the model cannot take."""


class UnknownNameError(KfiError, ValueError):
    """An unknown sampler, schedule, strategy, variant or other named choice."""


class ModelFileError(KfiError):
    """A model file or folder is missing, truncated, not safetensors, or not a model KFI knows."""


class CheckpointFormatError(ModelFileError):
    """A checkpoint's keys or shapes do not match the architecture it claims to be."""


class AdapterMismatchError(KfiError, ValueError):
    """An adapter file made for another base model, rank, frame count or format version."""


class VideoFileError(KfiError):
    """A video, frame folder or mask file cannot be read or written."""


class NonFiniteError(KfiError):
    """NaN or infinity appeared in the inputs or during sampling."""


class ResumeError(KfiError):
    """A training run cannot resume from the checkpoint it was pointed at."""


class CancelledError(KfiError):
    """The user cancelled a run between two steps."""


class LoraError(KfiError, ValueError):
    """LoRA settings or state are wrong: a rank or alpha that is not positive, LoRA added twice,
    merging a UNet without LoRA or merging twice, training without LoRA or without the widened conv_in.

    Also a ``ValueError`` (a bad value or call order, as peft's errors), so ``except ValueError`` works.
    """


class MaskSynthesisError(KfiError, ValueError):
    """Random training-mask settings are invalid (a size range with low > high, a ratio outside 0..1,
    a non-positive count), or the settings cannot produce a mask whose coverage is within the limits.

    Also a ``ValueError`` (a bad value), so ``except ValueError`` works.
    """


class ScheduleError(KfiError, ValueError):
    """A long-video schedule breaks a rule (a frame used before it is generated, generated twice or
    never, a window larger than the model's, a keyframe generated), or a schedule option is out of range.

    Also a ``ValueError`` (a bad value), so ``except ValueError`` works.
    """


class DatasetError(KfiError, ValueError):
    """A training dataset cannot be used: the folder is missing or holds no videos, a video is shorter than one
    clip (the message says how many frames a clip needs with the frame stride), or a dataset setting is invalid.

    Also a ``ValueError`` (a bad value), so ``except ValueError`` works. Unreadable files raise
    :class:`VideoFileError` naming the file.
    """


class TrainConfigError(KfiError, ValueError):
    """A training config file or command-line override is invalid: unknown key, wrong type, a resolution the
    model cannot take, a stage schedule without steps.

    Also a ``ValueError`` (a bad value), so ``except ValueError`` works.
    """


class BatchError(KfiError, ValueError):
    """A batch folder does not follow the naming convention of :func:`kfi_core.jobs.batch_jobs`: a clip without
    its mask, a mask or keyframe without its clip, two masks for one clip, or an empty folder.

    Also a ``ValueError`` (a bad value), so ``except ValueError`` works.
    """


class SettingsError(KfiError, ValueError):
    """A setting or argument has a bad value or is missing: a frame count outside the range a builder takes,
    a chunk size that is not a whole number >= 1, a components dict without a component it needs.

    Also a ``ValueError`` (a bad value), so ``except ValueError`` works.
    """


class OutOfMemoryPlanError(KfiError):
    """A run would not fit in the device's free memory by :func:`kfi_core.inference.plan.plan_memory`'s estimate,
    checked before it starts; the message names the estimate, the free memory and single settings that would fit
    (a smaller decode chunk, fp16, offload, a smaller working size)."""
