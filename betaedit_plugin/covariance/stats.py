"""Key second-moment statistics C0 = E[k k^T] for the edited layers, with a validated cache.

C0 of layer l is the mean UNCENTRED second moment of the input k (d_k,) of layer l's
rewrite module (the MLP output projection: ``down_proj``, ``c_proj``, ``fc_out``) over
every non-padding token of a text corpus. MEMIT, AlphaEdit and BetaEdit protect the
directions C0 spans.

What differs from the reference ``layer_stats`` (one full forward pass per layer):

- all requested layers are collected in ONE pass over the corpus, which stops right
  after the last requested layer's rewrite module has run (``StopForward``);
- sums are accumulated in float64 (:class:`SecondMoment`), whatever the forward dtype;
- texts are sorted by token length and right-padded per batch (right padding does not
  change the hidden states of the real tokens of a causal model; padding is masked out);
- every layer's result is cached as a safetensors file whose name holds a hash of the
  full key (model, weight fingerprint, tokenizer, layer, module, corpus + file sha256,
  sample count, max length, dtype) and whose metadata holds the key itself and the sha256
  of every tensor and of the key. A file is used only when its digests, key, shape,
  finiteness and symmetry check out; otherwise (a file without digests included) it is
  recomputed with a warning. Files are written atomically (temp file + ``os.replace``);
  a lock file beside each one lets one process compute it while the others wait and read it.

Usage::

    from betaedit_plugin.models.layout import ModelLayout
    from betaedit_plugin.covariance.stats import layer_second_moments
    layout = ModelLayout.from_model(model)
    covs = layer_second_moments(model, tok, layout, [4, 5, 6, 7, 8], n_samples=1000)
    covs[4].shape   # (d_k, d_k), float64, CPU

EasyEdit / AlphaEdit statistics (``.npz`` with ``mom2.mom2`` and ``mom2.count``) can be
imported with :func:`import_npz_stats`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._fileio import IntegrityError, read_tensors, sha256_file, wait_for_lock, write_tensors
from .._suggest import did_you_mean
from ..models.devices import stored_weight
from ..models.hooks import TraceDict

logger = logging.getLogger(__name__)

__all__ = [
    "SecondMoment",
    "layer_second_moments",
    "stats_for_hparams",
    "import_npz_stats",
    "load_corpus",
    "corpus_path",
    "stats_cache_key",
    "second_moment_sums",
    "write_second_moments",
    "BUNDLED_CORPORA",
]

_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BUNDLED_CORPORA: Dict[str, str] = {
    "wiki_vital": "corpus/wiki_vital_summaries_en.txt.gz",
}
"""Corpus names usable as ``mom2_dataset``, relative to ``betaedit_plugin/resources``."""

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_CACHE_FORMAT = "betaedit-c0-v1"
_FINGERPRINT_ELEMENTS = 1 << 20  # elements hashed per tensor (a strided subsample beyond that)
_SYMMETRY_RTOL = 1e-9


# ------------------------------------------------------------------ accumulation


class SecondMoment:
    """Running uncentred second moment of row vectors, summed in float64.

    ``add(x)`` with x (N, d) adds ``x^T x`` to ``mom2`` (d, d) and N to ``count``;
    ``moment()`` is ``mom2 / count`` = E[x x^T]. The sum lives on the device of the
    first batch (so a GPU forward pass accumulates on the GPU).
    """

    def __init__(self) -> None:
        self.count: int = 0
        self.mom2: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor) -> None:
        """Accumulate rows of ``x`` (N, d); N may be 0."""
        if x.dim() != 2:
            raise ValueError(f"SecondMoment.add expects a 2-D tensor (N, d), got shape {tuple(x.shape)}")
        if self.mom2 is None:
            self.mom2 = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.mom2.shape[0]:
            raise ValueError(f"SecondMoment.add: rows of width {x.shape[1]}, expected {self.mom2.shape[0]}")
        if x.shape[0] == 0:
            return
        x64 = x.to(dtype=torch.float64, device=self.mom2.device)
        self.mom2.addmm_(x64.t(), x64)
        self.count += int(x.shape[0])

    def moment(self) -> torch.Tensor:
        """E[x x^T] (d, d), float64, exactly symmetric."""
        if self.mom2 is None or self.count == 0:
            raise ValueError("SecondMoment.moment(): no rows were added (the corpus gave no tokens)")
        m = self.mom2 / self.count
        return (m + m.t()) / 2

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Tensors only: ``{"mom2": sum (d, d) float64, "count": int64 scalar}``."""
        if self.mom2 is None:
            raise ValueError("SecondMoment.state_dict(): nothing accumulated yet")
        return {"mom2": self.mom2.detach().cpu(), "count": torch.tensor(self.count, dtype=torch.int64)}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        mom2, count = state["mom2"], int(state["count"])
        if mom2.dim() != 2 or mom2.shape[0] != mom2.shape[1] or count < 0:
            raise ValueError(f"SecondMoment state: mom2 shape {tuple(mom2.shape)}, count {count}")
        self.mom2 = mom2.to(torch.float64).clone()
        self.count = count


# ------------------------------------------------------------------ corpus


def corpus_path(name_or_path: Union[str, Path]) -> Path:
    """The text file behind a corpus name (``'wiki_vital'``) or a ``.txt`` / ``.txt.gz`` path.

    Raises:
        KeyError: unknown corpus name (with "Did you mean" and the bundled names).
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not ``.txt`` / ``.txt.gz``.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"mom2_dataset={name_or_path!r}: expected a corpus name such as 'wiki_vital' or a path")
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_CORPORA:
        return _RESOURCES / BUNDLED_CORPORA[name_or_path]
    path = Path(name_or_path).expanduser()
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or os.sep in text or text.endswith((".txt", ".gz"))
    if not path.exists():
        if looks_like_path:
            raise FileNotFoundError(
                f"mom2_dataset={text!r}: no such file; give an existing .txt/.txt.gz file (one text per line) "
                f"or one of the bundled corpora {sorted(BUNDLED_CORPORA)}"
            )
        raise KeyError(
            f"Unknown corpus mom2_dataset={text!r}." + did_you_mean(text, sorted(BUNDLED_CORPORA), n=3, cutoff=0.5)
            + ", or a path to a .txt/.txt.gz file with one text per line."
        )
    if not path.is_file() or not path.name.endswith((".txt", ".txt.gz")):
        raise ValueError(
            f"mom2_dataset={text!r}: expected a .txt or .txt.gz file with one text per line"
        )
    return path


def _read_lines(path: Path) -> Iterable[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield line


def load_corpus(name_or_path: Union[str, Path], n: int) -> List[str]:
    """The first ``n`` non-empty texts (lines, stripped) of a corpus.

    Args:
        name_or_path: ``'wiki_vital'`` (bundled Wikipedia summaries, CC BY-SA 4.0) or a
            ``.txt`` / ``.txt.gz`` file with one text per line.
        n: number of texts wanted (fewer are returned, with a warning, if the corpus is short).

    Raises:
        ValueError: ``n`` is not a positive int, or the corpus holds no non-empty line.
        KeyError / FileNotFoundError: see :func:`corpus_path`.
    """
    _check_positive_int("n_samples", n)
    path = corpus_path(name_or_path)
    texts: List[str] = []
    for line in _read_lines(path):
        line = line.strip()
        if line:
            texts.append(line)
            if len(texts) == n:
                break
    if not texts:
        raise ValueError(
            f"mom2_dataset={str(name_or_path)!r} ({path}) holds no usable text: it needs non-empty lines, "
            "one text per line; use the bundled 'wiki_vital' corpus or fill the file"
        )
    if len(texts) < n:
        warnings.warn(
            f"mom2_dataset={str(name_or_path)!r} has only {len(texts)} non-empty lines; "
            f"mom2_n_samples={n} asked for more, using {len(texts)}",
            stacklevel=2,
        )
    return texts


# ------------------------------------------------------------------ input checks


def _check_positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r}: expected a positive int")
    return value


def _check_dtype(dtype: Union[str, torch.dtype], model: nn.Module) -> str:
    names = {v: k for k, v in _DTYPES.items()}
    if isinstance(dtype, torch.dtype):
        if dtype not in names:
            raise ValueError(f"mom2_dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
        dtype = names[dtype]
    if dtype not in _DTYPES:
        raise ValueError(f"mom2_dtype={dtype!r}: expected one of {sorted(_DTYPES)}." + did_you_mean(dtype, _DTYPES, available=False))
    model_dtype = _model_param(model).dtype
    if _DTYPES[dtype] != model_dtype:
        raise ValueError(
            f"mom2_dtype={dtype!r} but the model's parameters are {str(model_dtype).replace('torch.', '')}: "
            "the statistics pass runs in the model's own dtype (sums are float64 either way); set "
            f"mom2_dtype={names.get(model_dtype, str(model_dtype))!r} or load the model in {dtype}"
        )
    return dtype


def _model_param(model: nn.Module) -> torch.Tensor:
    for p in model.parameters():
        return p
    raise ValueError(f"{type(model).__name__} has no parameters")


# ------------------------------------------------------------------ cache key


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


def default_stats_dir() -> Path:
    """``$BETAEDIT_CACHE/stats`` (default ``~/.cache/betaedit_plugin/stats``)."""
    from betaedit_plugin.models.smollm2 import default_cache_dir

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


# ------------------------------------------------------------------ the pass


def _tokenize(tok: Any, texts: Sequence[str], max_length: int) -> List[List[int]]:
    enc = tok(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    return [ids for ids in enc["input_ids"] if len(ids) > 0]


def _batches(seqs: List[List[int]], batch_size: int, pad_id: int) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask) batches of similar length (longest first)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        group = [seqs[i] for i in order[start:start + batch_size]]
        width = len(group[0])
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        yield ids, mask


def _pad_id(tok: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if isinstance(value, int):
            return value
    return 0  # masked out and, with right padding, invisible to the real tokens


def _one_pass(
    model: nn.Module, layout: Any, layers: List[int], seqs: List[List[int]], batch_size: int, pad_id: int, progress: bool,
    rank: int = 0, world_size: int = 1,
) -> Dict[int, SecondMoment]:
    """Accumulate the rewrite-module inputs of ``layers`` in one pass that stops after the last.

    ``rank`` / ``world_size``: accumulate only batches rank, rank + world_size, ... (the batches
    themselves are the same for every world size, so the ranks' sums add up to the one-process sums).
    """
    from tqdm.auto import tqdm

    from ..models.devices import input_device

    device = input_device(model)
    names = {layout.rewrite_name(l): l for l in sorted(layers)}  # forward order: last name runs last
    stats = {l: SecondMoment() for l in layers}
    n_batches = len(range(rank, math.ceil(len(seqs) / batch_size), world_size))
    batches = (b for i, b in enumerate(_batches(seqs, batch_size, pad_id)) if i % world_size == rank)
    with torch.no_grad():
        for ids, mask in tqdm(batches, total=n_batches, disable=not progress,
                              desc=f"C0 statistics, layers {sorted(layers)}"):
            ids, mask = ids.to(device), mask.to(device)
            with TraceDict(model, list(names), retain_input=True, retain_output=False, stop=True) as td:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            keep = mask.bool()
            for name, layer in names.items():
                keys = td[name].input
                if keys is None:
                    raise RuntimeError(f"the hook on {name!r} saw no input: the forward pass never reached layer {layer}")
                stats[layer].add(keys[keep])  # (tokens, d_k)
    return stats


def layer_second_moments(
    model: nn.Module,
    tok: Any,
    layout: Any,
    layers: Sequence[int],
    *,
    corpus: Union[str, Path] = "wiki_vital",
    n_samples: int = 1000,
    max_length: int = 256,
    dtype: Union[str, torch.dtype] = "float32",
    batch_size: int = 8,
    cache_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
    use_cache: bool = True,
) -> Dict[int, torch.Tensor]:
    """C0 = E[k k^T] (d_k, d_k) of the rewrite-module input of each layer, one pass for all.

    Args:
        model: a causal LM (eval mode is not changed; gradients are not recorded).
        tok: its tokenizer (texts are truncated to ``max_length`` tokens).
        layout: the model's :class:`~betaedit_plugin.models.layout.ModelLayout`.
        layers: layer indices, e.g. [4, 5, 6, 7, 8].
        corpus: ``'wiki_vital'`` or a ``.txt``/``.txt.gz`` path (one text per line).
        n_samples: number of corpus texts (the first ``n_samples`` non-empty lines).
        max_length: tokens per text.
        dtype: the forward dtype; must be the model's parameter dtype (sums are float64).
        batch_size: texts per forward pass.
        cache_dir: directory of cached results; default ``$BETAEDIT_CACHE/stats``.
        progress: show a tqdm progress bar.
        use_cache: read and write the cache (False: always compute, write nothing).

    Returns:
        ``{layer: C0}`` in the order of ``layers``; each float64 on CPU, symmetric.

    Raises:
        ValueError: bad layers, counts or dtype (before anything runs), or a corpus with no text.
        KeyError / FileNotFoundError: unknown corpus name / missing corpus file.
    """
    layers = layout.check_layers(layers)
    n_samples = _check_positive_int("n_samples", n_samples)
    max_length = _check_positive_int("max_length", max_length)
    batch_size = _check_positive_int("batch_size", batch_size)
    dtype_name = _check_dtype(dtype, model)
    texts = load_corpus(corpus, n_samples)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_stats_dir()

    result: Dict[int, torch.Tensor] = {}
    keys: Dict[int, Dict[str, Any]] = {}
    if use_cache:
        keys = _cache_keys(model, tok, layout, layers, corpus, n_samples, max_length, dtype_name)
        for layer in layers:
            cached = _read_cached(_cache_file(cache_root, keys[layer]), keys[layer], layout.key_dim(model, layer))
            if cached is not None:
                result[layer] = cached
    missing = [l for l in layers if l not in result]
    with contextlib.ExitStack() as locks:
        if missing and use_cache:
            # one process computes a file, the others wait for it (lock beside it) and then read it
            cache_root.mkdir(parents=True, exist_ok=True)
            for layer in sorted(missing):  # one order everywhere: no deadlock between processes
                path = _cache_file(cache_root, keys[layer])
                locks.enter_context(wait_for_lock(f"{path}.lock", f"computes C0 of layer {layer} ({path.name})"))
            for layer in missing:
                cached = _read_cached(_cache_file(cache_root, keys[layer]), keys[layer],
                                      layout.key_dim(model, layer), warn=False)
                if cached is not None:
                    result[layer] = cached
            missing = [l for l in layers if l not in result]
        if missing and model.training:
            warnings.warn(
                f"{type(model).__name__} is in training mode: dropout makes the C0 statistics noisy; "
                "call model.eval() first",
                stacklevel=2,
            )
        if missing:
            seqs = _corpus_tokens(tok, corpus, texts, max_length)
            logger.info("computing C0 for layers %s on %d texts (one pass, stops after layer %d)",
                        missing, len(seqs), max(missing))
            stats = _one_pass(model, layout, missing, seqs, batch_size, _pad_id(tok), progress)
            for layer in missing:
                moment = stats[layer].moment().cpu()
                result[layer] = moment
                if use_cache:
                    _write_cached(_cache_file(cache_root, keys[layer]), keys[layer], moment, stats[layer].count)
    return {layer: result[layer] for layer in layers}


def _corpus_name(corpus: Union[str, Path]) -> str:
    """The corpus as the cache key names it: a bundled name, else the resolved path."""
    return corpus if isinstance(corpus, str) and corpus in BUNDLED_CORPORA else str(Path(corpus).expanduser().resolve())


def _corpus_tokens(tok: Any, corpus: Union[str, Path], texts: List[str], max_length: int) -> List[List[int]]:
    """``texts`` tokenized (see `_tokenize`); ValueError naming the corpus when nothing is left."""
    seqs = _tokenize(tok, texts, max_length)
    if not seqs:
        raise ValueError(
            f"mom2_dataset={_corpus_name(corpus)!r}: the tokenizer produced no tokens for its {len(texts)} texts"
        )
    return seqs


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


def second_moment_sums(
    model: nn.Module,
    tok: Any,
    layout: Any,
    layers: Sequence[int],
    *,
    corpus: Union[str, Path] = "wiki_vital",
    n_samples: int = 1000,
    max_length: int = 256,
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> Dict[int, SecondMoment]:
    """The float64 sums and token counts behind C0 (``SecondMoment`` per layer), no cache.

    With ``world_size`` > 1 only the batches ``rank, rank + world_size, ...`` of the one-process
    pass are run (same texts, order and batches), so the ranks' sums add up to the one-process sums
    (`betaedit_plugin.covariance.dist`). A rank may get no batch: its sums stay empty.
    """
    layers = layout.check_layers(layers)
    _check_positive_int("n_samples", n_samples)
    max_length = _check_positive_int("max_length", max_length)
    batch_size = _check_positive_int("batch_size", batch_size)
    seqs = _corpus_tokens(tok, corpus, load_corpus(corpus, n_samples), max_length)
    return _one_pass(model, layout, layers, seqs, batch_size, _pad_id(tok), progress, rank, world_size)


def write_second_moments(
    model: nn.Module,
    tok: Any,
    layout: Any,
    moments: Dict[int, Tuple[torch.Tensor, int]],
    *,
    corpus: Union[str, Path],
    n_samples: int,
    max_length: int,
    dtype: Union[str, torch.dtype] = "float32",
    cache_dir: Optional[Union[str, Path]] = None,
) -> Dict[int, Path]:
    """Cache ``{layer: (C0, token count)}`` under the key `layer_second_moments` looks up; returns the files."""
    dtype_name = _check_dtype(dtype, model)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_stats_dir()
    keys = _cache_keys(model, tok, layout, list(moments), corpus, n_samples, max_length, dtype_name)
    written = {}
    for layer, (moment, count) in moments.items():
        written[layer] = _cache_file(cache_root, keys[layer])
        _write_cached(written[layer], keys[layer], moment.cpu(), count)
    return written


def stats_for_hparams(model: nn.Module, tok: Any, hparams: Any, layout: Any, *, progress: bool = True) -> Dict[int, torch.Tensor]:
    """:func:`layer_second_moments` for ``hparams.layers`` with the hparams' ``mom2_*`` settings.

    Uses ``mom2_dataset``, ``mom2_n_samples``, ``mom2_max_length``, ``mom2_dtype`` and
    ``stats_dir`` (None: ``$BETAEDIT_CACHE/stats``).
    """
    return layer_second_moments(
        model, tok, layout, list(hparams.layers),
        corpus=hparams.mom2_dataset,
        n_samples=hparams.mom2_n_samples,
        max_length=hparams.mom2_max_length,
        dtype=hparams.mom2_dtype,
        cache_dir=hparams.stats_dir,
        progress=progress,
    )


# ------------------------------------------------------------------ import


def import_npz_stats(path: Union[str, Path]) -> torch.Tensor:
    """E[k k^T] (d_k, d_k) float64 from an EasyEdit / AlphaEdit / MEMIT ``layer_stats`` ``.npz``.

    Those files hold ``mom2.mom2``, the SUM of k k^T over ``mom2.count`` tokens (the
    reference ``SecondMoment.moment()`` divides one by the other); this returns the mean.
    Read with ``allow_pickle=False``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not such an ``.npz`` (missing keys, bad shape, count, values).
    """
    import numpy as np

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
