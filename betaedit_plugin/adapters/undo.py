"""Taking back the last step of a `BetaEditor`, and telling whether its weights were touched since.

`UndoLog.apply` writes a step through the editor and keeps what `undo` needs: a snapshot of the
state (references only, see `EditorState.snapshot`), the weights before the step, and content
hashes of the edited weights before and after it. `weights_status` compares the weights now with
those hashes: EasyEdit's non-sequential mode restores the original weights behind the editor's
back, and the EasyEdit adapter rolls its history back when it sees that (`adapters.easyedit`).

    log = UndoLog(editor)
    log.apply(requests)
    log.undo()                      # weights and history as before the step
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from .._fileio import tensor_sha256

__all__ = ["UndoLog"]


class UndoLog:
    """The last step of ``editor`` written through `apply`, kept so that it can be undone.

    Hashing the edited weights costs about as much as a solver step; only the adapters that need
    `weights_status` (EasyEdit's executor) keep one.
    """

    def __init__(self, editor) -> None:
        self.editor = editor
        self._last: Optional[tuple] = None  # (state snapshot, {layer: weights before})
        self._digests: Optional[Dict[str, Dict[int, str]]] = None  # {'before'|'after': {layer: sha256}}

    def _digest_now(self) -> Dict[int, str]:
        ed = self.editor
        return {l: tensor_sha256(ed.layout.read_weight(ed.model, l)) for l in ed.hparams.layers}

    def apply(self, requests, **kwargs) -> Dict[str, Any]:
        """`BetaEditor.apply`, remembering the state and the weights from before it."""
        ed = self.editor
        snap = ed.prepare().snapshot()
        before = {l: ed.layout.read_weight(ed.model, l) for l in ed.hparams.layers}
        info = ed.apply(requests, **kwargs)
        self._last = (snap, before)
        self._digests = {"before": {l: tensor_sha256(w) for l, w in before.items()}, "after": self._digest_now()}
        return info

    def undo(self, restore_weights: bool = True) -> None:
        """Return to the state (and, with ``restore_weights``, the weights) before the last `apply`."""
        if self._last is None:
            raise RuntimeError("nothing to undo: no UndoLog.apply() since the log was made or last undone")
        snap, before = self._last
        if restore_weights:
            for l, w in before.items():
                self.editor.layout.write_weight(self.editor.model, l, w)
        self.editor.state.restore(snap)
        self.forget()

    def forget(self) -> None:
        """Drop the last step (after the editor's state was replaced, e.g. by `load_state_dict`)."""
        self._last, self._digests = None, None

    def weights_status(self) -> str:
        """'unchanged' (as last written, or nothing logged), 'restored' (back to before the last apply)
        or 'changed' (anything else)."""
        if self._digests is None:
            return "unchanged"
        now = self._digest_now()
        if now == self._digests["after"]:
            return "unchanged"
        if now == self._digests["before"]:
            return "restored"
        return "changed"
