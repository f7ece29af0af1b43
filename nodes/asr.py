"""VoxCPM ASR Transcribe: AUDIO -> STRING with SenseVoice Small, ready for VoxCPM Prompt Audio's transcript."""
from __future__ import annotations

from ..voxcpm_engine.frontends.asr import LANGUAGES, SENSEVOICE, TAG_MODES, SenseVoice
from . import audio as audio_io
from . import comfy
from .frontends import DEVICES, FRONTEND_CACHE, device_for, list_models, load_with_progress, model_folder
from .loader import CATEGORY

FOLDER = "sensevoice"  # models/sensevoice/SenseVoiceSmall/
SOURCES = ["modelscope", "huggingface", "offline"]
WORKING_BYTES = 2 << 30  # 0.9 GB of weights plus the encoder's activations for a prompt-length clip


class VoxCPMASRTranscribe:
    DESCRIPTION = ("Transcribe a voice clip with SenseVoice Small (Chinese, English, Cantonese, Japanese, Korean): "
                   "connect the text to VoxCPM Prompt Audio's prompt_text. The model (models/sensevoice/) is "
                   "downloaded on first use; needs pip install funasr.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    OUTPUT_TOOLTIPS = ("What is said in the clip.",)
    FUNCTION = "transcribe"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio": ("AUDIO", {"tooltip": "The clip to transcribe (any sample rate; channels are mixed)."}),
            "model": (list_models(FOLDER, SENSEVOICE), {"default": SENSEVOICE.name, "tooltip": (
                "A folder in models/sensevoice/ (configuration.json, config.yaml, model.pt, the .bpe.model, "
                "am.mvn). The official model is downloaded there on first use (iic/SenseVoiceSmall on ModelScope, "
                "FunAudioLLM/SenseVoiceSmall on Hugging Face).")}),
            "language": (list(LANGUAGES), {"default": "auto", "tooltip": "auto detects the language."}),
            "use_itn": ("BOOLEAN", {"default": True, "tooltip": (
                "Inverse text normalisation: punctuation, casing and digits in the text.")}),
            "rich_tags": (list(TAG_MODES), {"default": "strip", "tooltip": (
                "SenseVoice also tags language, emotion and sound events (<|en|><|HAPPY|><|BGM|>...): strip them "
                "(what a transcript needs), keep them, or turn them into emoji.")}),
            "device": (DEVICES, {"default": "cpu", "tooltip": (
                "cpu keeps the GPU free (a prompt clip takes about a second); gpu uses ComfyUI's device.")}),
            "download_source": (SOURCES, {"default": "modelscope", "tooltip": (
                "Where a missing model is downloaded from; offline never touches the network (so does "
                "HF_HUB_OFFLINE=1).")}),
            "keep_loaded": ("BOOLEAN", {"default": False, "tooltip": (
                "Keep the model in memory for the next run; off frees it right after use.")}),
        }}

    def transcribe(self, audio, model, language="auto", use_itn=True, rich_tags="strip", device="cpu",
                   download_source="modelscope", keep_loaded=False):
        wav, rate = audio_io.from_audio(audio, "audio")
        folder = model_folder(FOLDER, SENSEVOICE, model)
        dev = device_for(device)
        comfy.free_memory(WORKING_BYTES, dev)

        def load():
            return load_with_progress(SENSEVOICE, folder, download_source,
                                      lambda: SenseVoice.load(folder, dev, download_source))

        def run(asr: SenseVoice):
            comfy.check_interrupt()
            return asr.transcribe(wav, rate, language=language, use_itn=bool(use_itn), tags=rich_tags)

        text = FRONTEND_CACHE.use(("sensevoice", str(folder), dev), load, bool(keep_loaded), run)
        comfy.log.info("VoxCPM: transcript: %s", text)
        return (text,)


comfy.register_extra_model_folder(FOLDER, {".json", ".yaml", ".pt", ".model", ".mvn"})
