"""ComfyUI nodes (V1 API) over voxcpm_engine; ComfyUI itself is reached only through nodes/comfy.py."""
from .asr import VoxCPMASRTranscribe
from .batch import VoxCPMBatchSynthesize
from .denoise import VoxCPMDenoise
from .dialogue import VoxCPMDialogue
from .library import VoxCPMLoadVoice, VoxCPMSaveVoice
from .loader import LoadVoxCPM
from .stream import VoxCPMStreamPreview
from .subtitles import VoxCPMSaveSubtitles
from .synthesize import VoxCPMSynthesize
from .voice import VoxCPMPromptAudio

NODE_CLASS_MAPPINGS = {
    "LoadVoxCPM": LoadVoxCPM,
    "VoxCPMPromptAudio": VoxCPMPromptAudio,
    "VoxCPMSynthesize": VoxCPMSynthesize,
    "VoxCPMBatchSynthesize": VoxCPMBatchSynthesize,
    "VoxCPMDenoise": VoxCPMDenoise,
    "VoxCPMASRTranscribe": VoxCPMASRTranscribe,
    "VoxCPMSaveVoice": VoxCPMSaveVoice,
    "VoxCPMLoadVoice": VoxCPMLoadVoice,
    "VoxCPMDialogue": VoxCPMDialogue,
    "VoxCPMSaveSubtitles": VoxCPMSaveSubtitles,
    "VoxCPMStreamPreview": VoxCPMStreamPreview,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadVoxCPM": "Load VoxCPM",
    "VoxCPMPromptAudio": "VoxCPM Prompt Audio",
    "VoxCPMSynthesize": "VoxCPM Synthesize",
    "VoxCPMBatchSynthesize": "VoxCPM Batch Synthesize",
    "VoxCPMDenoise": "VoxCPM Denoise",
    "VoxCPMASRTranscribe": "VoxCPM ASR Transcribe",
    "VoxCPMSaveVoice": "VoxCPM Save Voice",
    "VoxCPMLoadVoice": "VoxCPM Load Voice",
    "VoxCPMDialogue": "VoxCPM Dialogue",
    "VoxCPMSaveSubtitles": "VoxCPM Save Subtitles",
    "VoxCPMStreamPreview": "VoxCPM Stream Preview",
}
