"""SAM 3 / MedSAM3 through transformers: backend, LoRA merge, post-processing, settings."""

from segmenter.sam3.backend import Sam3Backend
from segmenter.sam3.lora import LoraMerge, LoraMismatchError, merge_lora
from segmenter.sam3.postprocess import PostProcess
from segmenter.sam3.settings import LoraSettings, Sam3Settings

__all__ = ["LoraMerge", "LoraMismatchError", "LoraSettings", "PostProcess", "Sam3Backend", "Sam3Settings", "merge_lora"]
