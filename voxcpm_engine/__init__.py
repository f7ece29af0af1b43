"""voxcpm_engine: VoxCPM text-to-speech inference (VoxCPM-0.5B, VoxCPM1.5, VoxCPM2) without ComfyUI."""
from .api import VoxCPM
from .engine import Engine, GenerationOptions
from .voice import Voice

__all__ = ["VoxCPM", "Engine", "GenerationOptions", "Voice"]
