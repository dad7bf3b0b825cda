"""``errored.tfstate``: a state Terraform could not upload at the end of an apply.

Terraform writes it into the working directory when saving state to the backend fails. It is
then the only record of what the apply created, so it must not be lost. It must not lie around
in clear text either, because a state contains secrets. And it must stop further applies of the
shard, because an apply against the older state in the bucket would create everything again.

The file is encrypted (Fernet, with a key of this checkout in ``.orchestrator/keys``, owner
only) next to a marker. Every later apply of the shard first tries to push it; until that
works the shard is blocked with a message that says how to resolve it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from .credentials import write_private_file
from .errors import OrchestratorError

ERRORED_STATE_FILE = "errored.tfstate"
MARKER_NAME = "marker.json"
ENCRYPTED_NAME = "errored.tfstate.enc"
KEY_FILE_NAME = "errored-state.key"


class ErroredStateBlocks(OrchestratorError):
    """The shard has an unsaved state from an earlier apply; applying now would lose it."""


@dataclass
class ErroredStateStore:
    """The kept errored state of one shard (``folder``), encrypted with the checkout's key."""

    folder: Path
    key_file: Path

    @classmethod
    def for_shard(cls, work_dir: Path, shard_path: str) -> "ErroredStateStore":
        return cls(folder=work_dir / "errored-state" / shard_path, key_file=work_dir / "keys" / KEY_FILE_NAME)

    def _fernet(self) -> Fernet:
        if not self.key_file.exists():
            self.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private_file(self.key_file, Fernet.generate_key().decode())
        return Fernet(self.key_file.read_text(encoding="utf-8").strip().encode())

    @property
    def marker(self) -> dict | None:
        path = self.folder / MARKER_NAME
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def keep(self, errored_file: Path, run_id: str, reason: str) -> Path:
        """Encrypt ``errored_file`` into the store, write the marker, delete the clear file."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        encrypted = self.folder / ENCRYPTED_NAME
        descriptor = os.open(encrypted, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(self._fernet().encrypt(errored_file.read_bytes()))
        marker = {"run_id": run_id, "kept_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": reason, "file": str(encrypted)}
        write_private_file(self.folder / MARKER_NAME, json.dumps(marker, indent=2))
        errored_file.unlink()
        return encrypted

    def decrypt_to(self, destination: Path) -> Path:
        """Write the kept state in clear to ``destination`` (mode 0600) for a push or a person."""
        try:
            clear = self._fernet().decrypt((self.folder / ENCRYPTED_NAME).read_bytes())
        except (InvalidToken, FileNotFoundError, ValueError) as error:
            raise ErroredStateBlocks(f"the kept errored state in {self.folder} cannot be decrypted with {self.key_file} ({type(error).__name__}); restore that key file or resolve by hand") from error
        descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(clear)
        # O_CREAT sets the mode only for a new file; an existing one is made private here.
        os.chmod(destination, 0o600)
        return destination

    def clear(self) -> None:
        for name in (ENCRYPTED_NAME, MARKER_NAME):
            (self.folder / name).unlink(missing_ok=True)
