"""ComfyUI nodes (V1 API) over voxcpm_engine; ComfyUI itself is reached only through nodes/comfy.py."""
from .loader import LoadVoxCPM
from .synthesize import VoxCPMSynthesize
from .voice import VoxCPMPromptAudio

NODE_CLASS_MAPPINGS = {
    "LoadVoxCPM": LoadVoxCPM,
    "VoxCPMPromptAudio": VoxCPMPromptAudio,
    "VoxCPMSynthesize": VoxCPMSynthesize,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadVoxCPM": "Load VoxCPM",
    "VoxCPMPromptAudio": "VoxCPM Prompt Audio",
    "VoxCPMSynthesize": "VoxCPM Synthesize",
}
