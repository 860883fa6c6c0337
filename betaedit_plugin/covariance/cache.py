"""The C0 cache: keys, file names, validated reads, atomic sealed writes, and ``.npz`` import.

Every layer's C0 is cached as a safetensors file whose name holds a hash of the full key
(model, weight fingerprint, tokenizer, layer, module, corpus + file sha256, sample count, max
length, dtype) and whose metadata holds the key itself and the sha256 of every tensor and of the
key. A file is used only when its digests, key, shape, finiteness and symmetry check out;
otherwise (a file without digests included) it is recomputed with a warning. Files are written
atomically (temp file + ``os.replace``); the lock file beside each one is taken by
`betaedit_plugin.covariance.collect`.

EasyEdit / AlphaEdit statistics (``.npz`` with ``mom2.mom2`` and ``mom2.count``) can be
imported with :func:`import_npz_stats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .._fileio import IntegrityError, read_tensors, sha256_file, write_tensors
from ..models.devices import stored_weight
from ..models.smollm2 import default_cache_dir
from .corpus import _corpus_name, corpus_path

__all__ = ["stats_cache_key", "weight_fingerprint", "default_stats_dir", "import_npz_stats"]


logger = logging.getLogger(__name__)

_CACHE_FORMAT = "betaedit-c0-v1"
_FINGERPRINT_ELEMENTS = 1 << 20  # elements hashed per tensor (a strided subsample beyond that)
_SYMMETRY_RTOL = 1e-9


def _tensor_digest(h: "hashlib._Hash", name: str, t: torch.Tensor) -> None:
    """Feed name, shape, dtype and (a strided subsample of) the bytes of ``t`` to ``h``."""
    flat = t.detach().reshape(-1)
    stride = max(1, flat.numel() // _FINGERPRINT_ELEMENTS)
    sample = flat[::stride].to("cpu").contiguous()
    if sample.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit patterns
        sample = sample.view(torch.int16)
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{stride}|".encode())
    h.update(sample.numpy().tobytes())


def weight_fingerprint(model: nn.Module, layout: Any, layer: int) -> str:
    """Hash of the weights that the keys of ``layer`` depend on and that editing changes.

    Covers the input embedding and the rewrite weights of layers 0..``layer`` (edits write
    only rewrite weights, so any earlier edit changes the fingerprint), plus the config's
    shape fields. Large tensors are hashed through a strided subsample of about 1M
    elements (a weight update changes nearly every element, so it is still detected).
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update(f"{type(model).__name__}|{getattr(config, 'model_type', '')}|{layout.n_layers}|".encode())
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        name = next(n for n, m in model.named_modules() if m is emb)
        _tensor_digest(h, "embed", stored_weight(model, name))
    for l in range(layer + 1):  # the real weight also when accelerate offloaded the layer
        _tensor_digest(h, layout.rewrite_name(l), stored_weight(model, layout.rewrite_name(l)))
    return h.hexdigest()


def _tokenizer_id(tok: Any) -> str:
    return f"{type(tok).__name__}|{getattr(tok, 'name_or_path', '')}|{len(tok)}"


def stats_cache_key(
    model: nn.Module, tok: Any, layout: Any, layer: int, *, corpus: str, corpus_sha256: str,
    n_samples: int, max_length: int, dtype: str,
) -> Dict[str, Any]:
    """Everything that changes C0 of ``layer``; stored in the cache file's metadata."""
    config = getattr(model, "config", None)
    return {
        "format": _CACHE_FORMAT,
        "statistic": "E[k k^T] over non-padding tokens, k = input of the rewrite module",
        "model": str(getattr(config, "name_or_path", "") or getattr(model, "name_or_path", "")),
        "model_type": layout.model_type,
        "weights_sha256": weight_fingerprint(model, layout, layer),
        "tokenizer": _tokenizer_id(tok),
        "layer": layer,
        "module": layout.rewrite_name(layer),
        "corpus": str(corpus),
        "corpus_sha256": corpus_sha256,
        "n_samples": n_samples,
        "max_length": max_length,
        "dtype": dtype,
    }


def _key_json(key: Dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def _cache_file(cache_dir: Path, key: Dict[str, Any]) -> Path:
    digest = hashlib.sha256(_key_json(key).encode()).hexdigest()[:24]
    return cache_dir / f"c0_layer{key['layer']}_{digest}.safetensors"


def _cache_keys(
    model: nn.Module, tok: Any, layout: Any, layers: Sequence[int], corpus: Union[str, Path],
    n_samples: int, max_length: int, dtype_name: str,
) -> Dict[int, Dict[str, Any]]:
    """The cache key of each layer's C0 (`stats_cache_key`; the corpus file is hashed once)."""
    sha = sha256_file(corpus_path(corpus))
    return {
        layer: stats_cache_key(
            model, tok, layout, layer, corpus=_corpus_name(corpus), corpus_sha256=sha,
            n_samples=n_samples, max_length=max_length, dtype=dtype_name,
        )
        for layer in layers
    }


def default_stats_dir() -> Path:
    """``$BETAEDIT_CACHE/stats`` (default ``~/.cache/betaedit_plugin/stats``)."""
    return default_cache_dir() / "stats"


def _read_cached(path: Path, key: Dict[str, Any], d_k: int, warn: bool = True) -> Optional[torch.Tensor]:
    """C0 from ``path`` if it exists, its sha256 digests match and it is valid for ``key``; None
    (with a warning unless ``warn`` is False) otherwise."""
    if not path.exists():
        return None
    try:
        if not path.is_file():  # e.g. a directory made at its name
            raise IntegrityError(path, "it is a directory, not a file" if path.is_dir() else "it is not a regular file")
        tensors, meta = read_tensors(path)
        moment, count = tensors["moment"], int(tensors["count"])
    except IntegrityError as exc:  # unreadable, a digest mismatch, or a file without digests
        problem = exc.problem
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        problem = f"unexpected content ({type(exc).__name__}: {exc})"
    else:
        problem = _validate_cached(meta, key, moment, count, d_k)
        if problem is None:
            logger.info("C0 layer %d read from %s (%d tokens)", key["layer"], path, count)
            return moment
    if warn:
        warnings.warn(f"ignoring the statistics cache file {path}: {problem}; recomputing it", stacklevel=3)
    return None


def _validate_cached(meta: Dict[str, str], key: Dict[str, Any], moment: torch.Tensor, count: int, d_k: int) -> Optional[str]:
    """None when valid, else what is wrong."""
    if meta.get("key") != _key_json(key):
        return "its metadata key does not match this model/layer/corpus/settings"
    if moment.dtype != torch.float64 or tuple(moment.shape) != (d_k, d_k):
        return f"expected a float64 ({d_k}, {d_k}) matrix, found {moment.dtype} {tuple(moment.shape)}"
    if count < 1:
        return f"token count {count} < 1"
    if not torch.isfinite(moment).all():
        return "it holds NaN or inf values"
    scale = moment.abs().max().item()
    if (moment - moment.t()).abs().max().item() > _SYMMETRY_RTOL * max(scale, 1e-300):
        return "the matrix is not symmetric"
    if (torch.diagonal(moment) < 0).any():
        return "the diagonal has negative entries (a second moment is positive semi-definite)"
    return None


def _write_cached(path: Path, key: Dict[str, Any], moment: torch.Tensor, count: int) -> None:
    """Atomic write, sealed with the sha256 of each tensor and of the key (`write_tensors`).

    A directory at the file's name is replaced when empty; one that is not is left alone, with a
    warning that C0 is not cached."""
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()
        except OSError:
            warnings.warn(f"the statistics cache file {path} is a directory that is not empty: C0 of layer "
                          f"{key['layer']} is not cached (remove the directory to cache it)", stacklevel=3)
            return
    tensors = {"moment": moment.contiguous(), "count": torch.tensor(count, dtype=torch.int64)}
    write_tensors(path, tensors, {"key": _key_json(key)})


def import_npz_stats(path: Union[str, Path]) -> torch.Tensor:
    """E[k k^T] (d_k, d_k) float64 from an EasyEdit / AlphaEdit / MEMIT ``layer_stats`` ``.npz``.

    Those files hold ``mom2.mom2``, the SUM of k k^T over ``mom2.count`` tokens (the
    reference ``SecondMoment.moment()`` divides one by the other); this returns the mean.
    Read with ``allow_pickle=False``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not such an ``.npz`` (missing keys, bad shape, count, values).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz statistics file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            mom2 = np.asarray(data["mom2.mom2"]) if "mom2.mom2" in files else None
            count = np.asarray(data["mom2.count"]) if "mom2.count" in files else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, AttributeError) as exc:
        # not a zip, truncated, or object arrays (which would need pickle)
        raise ValueError(
            f"{path}: not a readable .npz of plain arrays ({type(exc).__name__}: {exc}); "
            "statistics are read without pickle"
        ) from exc
    if mom2 is None or count is None:
        raise ValueError(
            f"{path}: expected EasyEdit/MEMIT layer_stats keys 'mom2.mom2' and 'mom2.count', found {sorted(files)}; "
            "compute the statistics with layer_second_moments instead"
        )
    if mom2.ndim != 2 or mom2.shape[0] != mom2.shape[1] or mom2.dtype.kind != "f":
        raise ValueError(f"{path}: 'mom2.mom2' must be a square float matrix, found {mom2.dtype} {mom2.shape}")
    if count.size != 1 or not float(count.reshape(())) > 0:
        raise ValueError(f"{path}: 'mom2.count' must be a positive token count, found {count!r}")
    moment = torch.from_numpy(mom2.astype(np.float64)) / float(count.reshape(()))
    if not torch.isfinite(moment).all():
        raise ValueError(f"{path}: 'mom2.mom2' holds NaN or inf values")
    return (moment + moment.t()) / 2
