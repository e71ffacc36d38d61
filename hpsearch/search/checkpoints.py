"""Where running trials keep their training state between epochs, so that a retried trial
continues from its predecessor's last finished epoch instead of starting over.

The folder is local to the machine (``hpsearch-checkpoints/STUDY/trial-N/state.pt`` beside a
sqlite storage's file, or in the working directory, or under ``--checkpoint-dir``): it is
never logged to MLflow. A trial's folder goes when the trial ends complete, pruned or
failed; it stays when the trial is interrupted or its process dies, for the retry to find.
A retry on another machine finds nothing and starts over.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpsearch.errors import ArgumentError

__all__ = ["CHECKPOINT_FOLDER", "CheckpointStore", "Previous", "TrialCheckpoint",
           "default_checkpoint_root"]

CHECKPOINT_FOLDER = "hpsearch-checkpoints"
STATE_FILE = "state.pt"


def default_checkpoint_root(storage: str) -> Path:
    """``hpsearch-checkpoints`` beside a sqlite storage's file, else in the working
    directory (a database server's trials still checkpoint on the machine that runs them)."""
    if storage.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        database = make_url(storage).database
        if database and database != ":memory:" and not database.startswith("file:"):
            return Path(database).resolve().parent / CHECKPOINT_FOLDER
    return Path.cwd() / CHECKPOINT_FOLDER


class CheckpointStore:
    """The checkpoint folders of one study: ``ROOT/STUDY/trial-N/state.pt``.

    Args:
        root: the folder that holds every study's checkpoints.
        study_name: the study; a name that is not a plain file name (``/``, spaces) gets a
            folder of its characters that are, and a hash of it.
    """

    def __init__(self, root: str | Path, study_name: str) -> None:
        self.root = Path(root).absolute()
        self.folder = self.root / _folder_name(study_name)

    def check_writable(self) -> None:
        """Check, without writing, that the root folder exists and can be written, or can
        be created where its nearest existing parent can be written.

        Raises:
            ArgumentError: it is a file, or cannot be written or created (naming the
                argument ``checkpoint_dir``).
        """
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ArgumentError("{checkpoint_dir} {root}: {existing} is not a directory",
                                root=self.root, existing=existing)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ArgumentError("{checkpoint_dir} {root}: cannot write in {existing}; pass a "
                                "writable {checkpoint_dir}", root=self.root, existing=existing)

    def path(self, number: int) -> Path:
        """The state file of trial ``number``."""
        return self.folder / f"trial-{number}" / STATE_FILE

    def save(self, number: int, state: dict[str, Any]) -> None:
        """Replace trial ``number``'s state, atomically.

        Raises:
            OSError: it cannot be written (the previous state, if any, stays).
        """
        from hpsearch.training.checkpoint import save_state

        save_state(state, self.path(number))

    def load(self, number: int) -> dict[str, Any]:
        """Trial ``number``'s state.

        Raises:
            FileNotFoundError: there is none.
            Exception: it cannot be read (see ``load_state``).
        """
        from hpsearch.training.checkpoint import load_state

        return load_state(self.path(number))

    def remove(self, numbers: Sequence[int]) -> None:
        """Delete the folders of these trials, and the study's folder once it is empty."""
        for number in numbers:
            shutil.rmtree(self.path(number).parent, ignore_errors=True)
        try:
            self.folder.rmdir()
        except OSError:  # other trials' folders are left, or it is gone
            pass


@dataclass(frozen=True)
class Previous:
    """What a retried trial found of its predecessors' training.

    Attributes:
        number: the trial whose state was found, or the one retried if none was.
        state: the saved state, or None.
        reason: where it was found, or why nothing was (one line for people).
    """

    number: int
    state: dict[str, Any] | None
    reason: str


class TrialCheckpoint:
    """The state of one trial, and of the trials it retries.

    Args:
        store: the study's checkpoint folders.
        number: the trial's number.
        retried: the trials it retries, oldest first (Optuna's ``retry_history``).
    """

    def __init__(self, store: CheckpointStore, number: int, retried: Sequence[int] = ()) -> None:
        self.store, self.number, self.retried = store, number, list(retried)
        self._saved = False

    def previous(self) -> Previous:
        """The newest saved state of the trials this one retries (a retry of a retry may
        find its grandparent's, when its parent died before finishing an epoch)."""
        last = self.retried[-1]
        for number in reversed(self.retried):
            try:
                return Previous(number, self.store.load(number),
                                f"checkpoint {self.store.path(number)}")
            except FileNotFoundError:
                continue
            except Exception as exc:  # truncated by a power loss, say: start over
                return Previous(number, None, f"its checkpoint {self.store.path(number)} "
                                              f"cannot be read ({type(exc).__name__})")
        return Previous(last, None, f"no checkpoint of trial {last} in {self.store.folder} "
                                    "(it finished no epoch, or ran on another machine)")

    def save(self, state: dict[str, Any]) -> None:
        """Save this trial's state; after the first save, its predecessors' states are
        superseded and removed.

        Raises:
            OSError: it cannot be written.
        """
        self.store.save(self.number, state)
        if not self._saved and self.retried:
            self.store.remove(self.retried)
        self._saved = True

    def discard(self) -> None:
        """Remove this trial's state and its predecessors' (the trial has ended)."""
        self.store.remove([*self.retried, self.number])


def _folder_name(study_name: str) -> str:
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", study_name).lstrip(".") or "_"
    if plain == study_name:
        return plain
    return f"{plain}-{hashlib.sha1(study_name.encode()).hexdigest()[:8]}"
