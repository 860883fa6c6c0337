"""Write an NLTK Punkt sentence model, trained on the bundled Wikipedia corpus, into ``<prefix>/nltk_data``.

    python tests/easyedit/make_punkt.py            # into sys.prefix/nltk_data (the venv's; NLTK looks there)

EasyEdit's fluency metric (``test_generation=True``) tokenises with ``nltk.word_tokenize``, which
needs NLTK's Punkt model; NLTK fetches it with ``nltk.download('punkt')`` from GitHub, which the
test machines cannot reach. This trains one (unsupervised, as Punkt is) on 2,000 texts of the
bundled corpus (CC BY-SA 4.0, see betaedit_plugin/resources/SOURCES.md) and saves it where NLTK
3.6 looks for it. Word n-gram entropies computed with it can differ slightly from those with
NLTK's distributed model (sentence boundaries only).
"""

from __future__ import annotations

import gzip
import pickle
import sys
from itertools import islice
from pathlib import Path


def main() -> int:
    from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer

    from betaedit_plugin.data import resource_path

    target = Path(sys.prefix) / "nltk_data" / "tokenizers" / "punkt" / "PY3" / "english.pickle"
    if target.is_file():
        print(f"{target} exists")
        return 0
    with gzip.open(resource_path("corpus/wiki_vital_summaries_en.txt.gz"), "rt", encoding="utf-8") as stream:
        text = "\n".join(line.strip() for line in islice(stream, 2000))
    trainer = PunktTrainer()
    trainer.train(text, finalize=True)
    model = PunktSentenceTokenizer(trainer.get_params())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(model, f)
    tmp.replace(target)
    print(f"wrote {target} (Punkt trained on 2,000 texts of the bundled corpus)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
