"""Settings of the SAM 3 / MedSAM3 backend, from keyword arguments or a YAML / JSON file.

```yaml
model: /models/sam3                 # transformers SAM 3 folder (config.json, weights, processor files) or a hub id
lora:                               # optional: MedSAM3's LoRA file, in the native sam3 format
  path: /models/MedSAM3_v1/best_lora_weights.pt
  rank: 16                          # MedSAM3 v1
  alpha: 32
device: auto                        # auto | cuda | cuda:1 | cpu
dtype: auto                         # auto (bf16 on GPUs that have it, else fp16; fp32 on CPU) | bf16 | fp16 | fp32
postprocess:                        # omitted keys take the preset's value (medsam3 with a LoRA, transformers without)
  score_threshold: 0.5
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from segmenter.sam3.postprocess import PostProcess

CONFIG_ENV = "MEDSAM3_SAM3_CONFIG"  # a settings file, used when the backend is built without arguments
MODEL_ENV = "MEDSAM3_SAM3_MODEL"  # or just the model folder / hub id


class LoraSettings(BaseModel):
    path: Path
    rank: int = Field(16, gt=0)  # MedSAM3 v1
    alpha: float = Field(32.0, gt=0)


class Sam3Settings(BaseModel):
    model: str = Field(description="folder with a transformers SAM 3 checkpoint, or a hub id such as facebook/sam3")
    lora: LoraSettings | None = None
    device: str = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    postprocess_preset: Literal["auto", "medsam3", "transformers"] = "auto"
    postprocess: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(8, ge=1, description="prompts decoded together on one image")
    cache_images: int = Field(4, ge=1)
    cache_mb: float = Field(2048, gt=0, description="budget for cached images and their features (GPU memory on cuda)")
    concepts: list[str] | None = Field(None, description="concept names to advertise; default: the project's catalog")

    def postprocess_settings(self) -> PostProcess:
        preset = self.postprocess_preset
        if preset == "auto":
            preset = "medsam3" if self.lora is not None else "transformers"
        factory = PostProcess.medsam3 if preset == "medsam3" else PostProcess.transformers
        return factory(**self.postprocess)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Sam3Settings:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SAM 3 settings file not found: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml / json parse errors: name the file
            raise ValueError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings at the top level")  # noqa: TRY004 (a bad file)
        data.update({k: v for k, v in overrides.items() if v is not None})
        base = path.parent
        # relative paths in the file are relative to the file
        if isinstance(data.get("model"), str) and (base / data["model"]).exists():
            data["model"] = str((base / data["model"]).resolve())
        if isinstance(data.get("lora"), dict) and "path" in data["lora"]:
            data["lora"] = {**data["lora"], "path": base / Path(str(data["lora"]["path"]).strip())}
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "settings") -> Sam3Settings:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{source}: invalid SAM 3 settings ({problems})") from None

    @classmethod
    def from_env(cls) -> Sam3Settings:
        if os.environ.get(CONFIG_ENV):
            return cls.from_file(os.environ[CONFIG_ENV])
        if os.environ.get(MODEL_ENV):
            return cls(model=os.environ[MODEL_ENV])
        raise ValueError(
            f"the sam3 backend needs a model: pass model=... (a transformers SAM 3 folder or hub id), "
            f"or set {CONFIG_ENV} to a settings file or {MODEL_ENV} to the model folder"
        )
