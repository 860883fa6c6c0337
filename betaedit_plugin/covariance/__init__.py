"""Key second-moment statistics C0 = E[k k^T] for the edited layers, with a validated cache.

C0 of layer l is the mean uncentred second moment of the input of layer l's rewrite module over
the non-padding tokens of a text corpus; MEMIT, AlphaEdit and BetaEdit protect the directions it
spans. The package, by what each module holds:

- ``moment``: :class:`SecondMoment`, the running float64 sum of x^T x and its token count;
- ``corpus``: corpus names and files, :func:`load_corpus`, tokenised, length-sorted batches;
- ``cache``: cache keys (:func:`stats_cache_key`, :func:`weight_fingerprint`), file names, reads
  that check digests, key, shape, finiteness and symmetry, atomic sealed writes, and
  :func:`import_npz_stats` for EasyEdit / AlphaEdit ``.npz`` statistics;
- ``collect``: the one forward pass that records the keys of all requested layers, and the entry
  points :func:`layer_second_moments`, :func:`stats_for_hparams`, :func:`second_moment_sums`,
  :func:`write_second_moments`;
- ``dist``: :func:`distributed_second_moments`, the same statistics data-parallel on
  torch.distributed (command line: ``python -m betaedit_plugin.stats``).

Usage::

    from betaedit_plugin.models.layout import ModelLayout
    from betaedit_plugin.covariance import layer_second_moments
    layout = ModelLayout.from_model(model)
    covs = layer_second_moments(model, tok, layout, [4, 5, 6, 7, 8], n_samples=1000)
    covs[4].shape   # (d_k, d_k), float64, CPU
"""

from .cache import default_stats_dir, import_npz_stats, stats_cache_key, weight_fingerprint
from .collect import layer_second_moments, second_moment_sums, stats_for_hparams, write_second_moments
from .corpus import BUNDLED_CORPORA, corpus_path, load_corpus
from .dist import distributed_second_moments
from .moment import SecondMoment

__all__ = [
    "SecondMoment",
    "layer_second_moments",
    "stats_for_hparams",
    "import_npz_stats",
    "load_corpus",
    "corpus_path",
    "stats_cache_key",
    "weight_fingerprint",
    "default_stats_dir",
    "second_moment_sums",
    "write_second_moments",
    "distributed_second_moments",
    "BUNDLED_CORPORA",
]
