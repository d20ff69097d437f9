"""Reference attention: every frame's spatial self-attention also sees the tokens of the window's known frames.

Not in the seeds (000 only widens the input conv and adds LoRA); an option of the adapter, off unless the adapter
file says it was trained with it (``kfi.reference_attention`` in its metadata, written by :func:`save_adapter
<kfi_core.adapter.save_adapter>`). The idea is the cross-frame attention of video editing methods: SVD's spatial
attention mixes tokens within one frame and its temporal attention mixes one pixel position across frames, so a
keyframe's appearance reaches a moving object elsewhere in another frame only through both in turn. With reference
attention the keys and values of each frame's spatial self-attention (``attn1`` of every ``transformer_blocks``
block) are the frame's own followed by those of the **reference frames**, so a frame's queries can look the
keyframe up directly.

Reference frames are found from the UNet input itself (:func:`reference_frames`): a frame whose black-filled and
white-filled condition latents are equal is fully known (a keyframe, an anchor of the long-video schedule, a frame
with an empty mask); the unconditional half of classifier-free guidance (all-zero condition) has none. So nothing
else is passed around and every caller of the UNet (sampler, long-video schedules, training) gets it alike. A
batch element without reference frames runs exactly the stock attention.

Cost: each frame's keys and values grow by ``n_ref`` frames' tokens (one keyframe: twice as many), in the spatial
self-attention layers only.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .conv_in import KFI_IN_CHANNELS
from .errors import KfiError

logger = logging.getLogger(__name__)

_LATENT = 4  # KFI's input: 4 noisy, 4 black-filled, 4 white-filled condition channels
# fully known: the two condition halves agree to this fraction of their size (bitwise equal in practice: the same
# pixels through the same encoder; the tolerance covers backends whose kernels are not run-to-run deterministic)
_EQUAL_RTOL = 1e-4
_HOOK_ATTR = "_kfi_reference_attention"  # on the UNet: (its pre-hook's handle, the processors it replaced)


class ReferenceAttentionError(KfiError):
    """The UNet cannot take reference attention (an attention layer of another kind than SVD's)."""


def reference_frames(sample: torch.Tensor) -> list[list[int]]:
    """The fully known frames of each batch element of a KFI UNet input ``sample`` [B, F, 12, h, w]: those whose
    black-filled (channels 4-7) and white-filled (8-11) condition latents are equal and not all zero."""
    if sample.ndim != 5 or sample.shape[2] != KFI_IN_CHANNELS:
        return [[] for _ in range(sample.shape[0])] if sample.ndim == 5 else []
    black = sample[:, :, _LATENT:2 * _LATENT].float().flatten(2)  # [B, F, 4*h*w]
    white = sample[:, :, 2 * _LATENT:].float().flatten(2)
    size = black.abs().amax(-1)  # [B, F]
    known = ((black - white).abs().amax(-1) <= _EQUAL_RTOL * size.clamp(min=1.0)) & (size > 0)
    return [torch.nonzero(row).flatten().tolist() for row in known.cpu()]


class _State:
    """What one UNet call's reference processors share: frames per clip and each clip's reference frames."""

    def __init__(self) -> None:
        self.num_frames = 0
        self.refs: list[list[int]] = []


class ReferenceAttnProcessor:
    """Spatial self-attention whose keys/values are each frame's own tokens followed by its clip's reference frames'.

    ``hidden_states`` [B*F, n, C] (diffusers' SVD UNet puts the frames of a clip next to each other in the batch).
    A clip without reference frames, or a call whose batch is not B*F of the last UNet input (the processor used
    outside a KFI UNet call), gets the stock attention (``AttnProcessor2_0``'s arithmetic).
    """

    def __init__(self, state: _State) -> None:
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ReferenceAttentionError(
                "reference attention: installed on a layer that is not plain self-attention over [B*F, tokens, C] "
                "(it got a context, a mask or a 4-D input). It belongs on attn1 of the spatial transformer blocks "
                "of an SVD UNet; load the adapter into such a UNet.")
        bf, n, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # [b, tokens, heads*d] -> [b, heads, tokens, d]
            return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        frames, refs = self.state.num_frames, self.state.refs
        if not any(refs) or bf != frames * len(refs):
            out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        else:
            parts = []
            for i, ref in enumerate(refs):  # one clip at a time: clips may have different reference frames
                rows = slice(i * frames, (i + 1) * frames)
                k, v = key[rows], value[rows]
                if ref:
                    # [n_ref, n, C] -> [1, n_ref*n, C] -> every frame: [F, n + n_ref*n, C]
                    k = torch.cat([k, k[ref].reshape(1, -1, k.shape[-1]).expand(frames, -1, -1)], dim=1)
                    v = torch.cat([v, v[ref].reshape(1, -1, v.shape[-1]).expand(frames, -1, -1)], dim=1)
                parts.append(F.scaled_dot_product_attention(split(query[rows]), split(k), split(v)))
            out = torch.cat(parts)
        out = out.transpose(1, 2).reshape(bf, n, -1).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))  # linear, dropout


def _spatial_self_attention(name: str) -> bool:
    # "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"; the temporal blocks'
    # "...temporal_transformer_blocks.0.attn1.processor" do not match
    return ".transformer_blocks." in name and name.endswith(".attn1.processor")


def _check_layer(name: str, attn) -> None:
    odd = [what for what, present in (("group_norm", attn.group_norm is not None),
                                      ("spatial_norm", attn.spatial_norm is not None),
                                      ("norm_q", attn.norm_q is not None), ("norm_k", attn.norm_k is not None),
                                      ("residual_connection", bool(attn.residual_connection)),
                                      ("rescale_output_factor", attn.rescale_output_factor != 1.0),
                                      ("cross-attention", attn.is_cross_attention)) if present]
    if odd:
        raise ReferenceAttentionError(
            f"reference attention: {name} has {', '.join(odd)}, which SVD's spatial self-attention does not; this "
            "UNet is not the SVD architecture the adapter was trained on. Load it into an SVD UNet.")


def enable_reference_attention(unet) -> None:
    """Give ``unet`` (a diffusers ``UNetSpatioTemporalConditionModel``) reference attention; idempotent."""
    if reference_attention_enabled(unet):
        return
    modules = dict(unet.named_modules())
    state = _State()
    processors, replaced = {}, {}
    for name, processor in unet.attn_processors.items():
        if _spatial_self_attention(name):
            _check_layer(name, modules[name.rsplit(".processor", 1)[0]])
            processors[name], replaced[name] = ReferenceAttnProcessor(state), processor
        else:
            processors[name] = processor
    if not replaced:
        raise ReferenceAttentionError("reference attention: the UNet has no spatial self-attention layers "
                                      "(transformer_blocks.*.attn1); give an SVD UNet.")

    def pre_hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        state.num_frames = int(sample.shape[1]) if sample.ndim == 5 else 0
        state.refs = reference_frames(sample)

    unet.set_attn_processor(processors)
    handle = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    setattr(unet, _HOOK_ATTR, (handle, replaced))
    logger.debug("reference attention on %d layers", len(replaced))


def disable_reference_attention(unet) -> None:
    """Undo :func:`enable_reference_attention` (the processors it replaced back in place); a no-op where it is off."""
    installed = getattr(unet, _HOOK_ATTR, None)
    if installed is None:
        return
    handle, replaced = installed
    handle.remove()
    delattr(unet, _HOOK_ATTR)
    unet.set_attn_processor({name: replaced.get(name, p) for name, p in unet.attn_processors.items()})


def reference_attention_enabled(unet) -> bool:
    return getattr(unet, _HOOK_ATTR, None) is not None
