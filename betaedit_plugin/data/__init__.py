"""Edit datasets as typed :class:`~betaedit_plugin.requests.EditRequest` lists.

Bundled data (``betaedit_plugin/resources/``, attribution in ``resources/SOURCES.md``):

* CounterFact in EasyEdit's format, splits ``edit`` (10,000), ``train`` (10,000), ``val`` (1,919);
* ZsRE in MEND's schema, splits ``eval`` (1,037, EasyEdit's portability subset) and ``train`` (1,000).

A record that is not a valid edit (subject not in its prompt, empty target ...) is an error that
lists the invalid records; ``skip_invalid=True`` leaves them out with a warning (the returned
`EditList` names them in ``skipped``). Files of your own are read by content: CounterFact in EasyEdit's format or in ROME/MEMIT's
(``counterfact.json``, ``multi_counterfact.json``), ZsRE in MEND's (``zsre_mend_eval.json``); see
`betaedit_plugin.data.formats`. Anything else stops with an error that lists the accepted formats.

Example::

    from betaedit_plugin.data import load_dataset
    requests = load_dataset("counterfact", n=20)      # list[EditRequest]
"""

from __future__ import annotations

from .formats import FORMATS, detect_format, to_memit_counterfact
from .loaders import (
    DATASETS,
    DatasetError,
    EditList,
    InvalidRecord,
    TooFewRecords,
    available_datasets,
    load_counterfact,
    load_dataset,
    load_edit_file,
    load_zsre,
    read_json_records,
    resource_path,
)

__all__ = [
    "DATASETS",
    "FORMATS",
    "detect_format",
    "load_edit_file",
    "to_memit_counterfact",
    "DatasetError",
    "EditList",
    "InvalidRecord",
    "TooFewRecords",
    "available_datasets",
    "load_counterfact",
    "load_dataset",
    "load_zsre",
    "read_json_records",
    "resource_path",
]
