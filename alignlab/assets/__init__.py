"""Assets shipped with the package: the embedded default model and the generated-review corpus it was
pretrained on (`corpus`, also the demo's prompts). Its builder, `alignlab.assets.build.tiny_model`, is not on
any runtime path; `make model` runs it."""

from pathlib import Path

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "tiny-llama"
EMBEDDED_MODEL_NAME = "alignlab/tiny-llama"
