"""The statistics pass: C0 = E[k k^T] of the edited layers' keys, and its entry points.

C0 of layer l is the mean UNCENTRED second moment of the input k (d_k,) of layer l's
rewrite module (the MLP output projection: ``down_proj``, ``c_proj``, ``fc_out``) over
every non-padding token of a text corpus. MEMIT, AlphaEdit and BetaEdit protect the
directions C0 spans.

What differs from the reference ``layer_stats`` (one full forward pass per layer):

- all requested layers are collected in ONE pass over the corpus, which stops right
  after the last requested layer's rewrite module has run (``StopForward``);
- sums are accumulated in float64 (:class:`~betaedit_plugin.covariance.moment.SecondMoment`),
  whatever the forward dtype;
- texts are sorted by token length and right-padded per batch (`betaedit_plugin.covariance.corpus`);
- every layer's result is cached under a key that holds everything it depends on, and read back
  only after validation (`betaedit_plugin.covariance.cache`); a lock file beside each cache file
  lets one process compute it while the others wait and read it.

Usage::

    from betaedit_plugin.models.layout import ModelLayout
    from betaedit_plugin.covariance import layer_second_moments
    layout = ModelLayout.from_model(model)
    covs = layer_second_moments(model, tok, layout, [4, 5, 6, 7, 8], n_samples=1000)
    covs[4].shape   # (d_k, d_k), float64, CPU
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .._fileio import wait_for_lock
from .._suggest import did_you_mean
from ..models.devices import input_device
from ..models.hooks import TraceDict
from .cache import _cache_file, _cache_keys, _read_cached, _write_cached, default_stats_dir
from .corpus import _batches, _check_positive_int, _corpus_tokens, _pad_id, load_corpus
from .moment import SecondMoment

__all__ = ["layer_second_moments", "stats_for_hparams", "second_moment_sums", "write_second_moments"]


logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


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


def _one_pass(
    model: nn.Module, layout: Any, layers: List[int], seqs: List[List[int]], batch_size: int, pad_id: int, progress: bool,
    rank: int = 0, world_size: int = 1,
) -> Dict[int, SecondMoment]:
    """Accumulate the rewrite-module inputs of ``layers`` in one pass that stops after the last.

    ``rank`` / ``world_size``: accumulate only batches rank, rank + world_size, ... (the batches
    themselves are the same for every world size, so the ranks' sums add up to the one-process sums).
    """
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


def stats_for_hparams(model: nn.Module, tok: Any, hparams: Any, layout: Any, *, progress: bool = True,
                      use_cache: bool = True) -> Dict[int, torch.Tensor]:
    """:func:`layer_second_moments` for ``hparams.layers`` with the hparams' ``mom2_*`` settings.

    Uses ``mom2_dataset``, ``mom2_n_samples``, ``mom2_max_length``, ``mom2_dtype`` and
    ``stats_dir`` (None: ``$BETAEDIT_CACHE/stats``); ``use_cache=False`` computes and writes nothing there.
    """
    return layer_second_moments(
        model, tok, layout, list(hparams.layers),
        corpus=hparams.mom2_dataset,
        n_samples=hparams.mom2_n_samples,
        max_length=hparams.mom2_max_length,
        dtype=hparams.mom2_dtype,
        cache_dir=hparams.stats_dir,
        progress=progress,
        use_cache=use_cache,
    )
