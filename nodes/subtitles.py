"""VoxCPM Save Subtitles: write the subtitles text of Synthesize or Dialogue to ComfyUI's output folder.

ComfyUI core has no node that saves text to a file, so this small output node does it, named like Save Audio's files
(<prefix>_00001_.srt), numbered among subtitle files only, so they pair with the audio by number.
"""
from __future__ import annotations

from . import comfy
from .loader import CATEGORY


class VoxCPMSaveSubtitles:
    DESCRIPTION = ("Save subtitles (the SRT or WebVTT text from VoxCPM Synthesize or Dialogue) to the output folder, "
                   "as <prefix>_00001_.srt or .vtt.")
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "subtitles": ("STRING", {"forceInput": True, "tooltip": "The subtitles output of Synthesize or Dialogue."}),
            "filename_prefix": ("STRING", {"default": "subtitles/VoxCPM", "tooltip": (
                "Like Save Audio's prefix: sub-folders allowed, inside the output folder only. Files are numbered "
                "among subtitle files only, so 'subtitles/X' next to Save Audio's 'audio/X' gives matching "
                "numbers (X_00001_.flac and X_00001_.srt). Not the very same prefix as the audio: Save Audio counts "
                "every file of its prefix and would skip a number.")}),
        }}

    def save(self, subtitles, filename_prefix="subtitles/VoxCPM"):
        if not isinstance(subtitles, str) or not subtitles.strip():
            raise ValueError("subtitles: nothing to save (connect the subtitles output of Synthesize or Dialogue)")
        extension = ".vtt" if subtitles.lstrip().startswith("WEBVTT") else ".srt"
        path, entry = comfy.output_file(filename_prefix, extension)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(subtitles)
        comfy.log.info("VoxCPM: subtitles saved to %s", path)
        return {"ui": {"text": [path], "subtitles": [entry]}, "result": ()}
