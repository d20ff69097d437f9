"""KFI nodes for ComfyUI (V3 schema). Thin wrappers over :mod:`kfi_core`.

Node ids never change once released; retired nodes move to a deprecated module and stay
loadable. Custom types are ``KFI_*``; every category sits under ``KFI/``.
"""

from comfy_api.latest import ComfyExtension, io

from . import bridge
from .condition import KFIConditionPreview, KFISymmetricMaskEncode
from .crop import KFICropForInpaint, KFIStitchCrop
from .deprecated import SymmetricMaskEncode
from .keyframes import KFIInsertKeyframes, KFISelectKeyframe
from .loaders import KFIModelInfo, LoadKFInpaintCheckpoint, LoadKFInpaintModel
from .masks import KFIMaskPrepare
from .sample import KFISampleClip
from .sampler import KeyframePropagateSampler
from .schedule import LongVideoAnchorSchedule

bridge.register_folders()

NODES: list[type[io.ComfyNode]] = [
    LoadKFInpaintModel,
    KFISymmetricMaskEncode,
    KFIConditionPreview,
    KeyframePropagateSampler,
    LongVideoAnchorSchedule,
    KFIModelInfo,
    KFIMaskPrepare,
    KFISelectKeyframe,
    KFIInsertKeyframes,
    KFICropForInpaint,
    KFIStitchCrop,
    LoadKFInpaintCheckpoint,
    KFISampleClip,
    SymmetricMaskEncode,  # deprecated (nodes/deprecated.py)
]


class KFIExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
