"""The model store against a real database: scan, add, clash, traversal, demo model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.db.database import Database
from app.store.catalog import ModelStore, ModelStoreError, describe_model
from app.store.demo import DEMO_FILE, add_demo_model, find_demo_model


def test_scan_lists_valid_and_invalid(
    database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> None:
    (models_dir / "nested").mkdir()
    good = tiny_gguf("good.gguf")
    os.link(good, models_dir / "nested" / "good.gguf")
    (models_dir / "text.gguf").write_text("not a model")
    data = good.read_bytes()
    (models_dir / "cut.gguf").write_bytes(data[: len(data) // 2])
    (models_dir / "readme.txt").write_text("ignored: not .gguf")

    store = ModelStore(database.engine, models_dir)
    report = store.scan()
    assert report.valid == ["nested/good.gguf"]
    assert set(report.invalid) == {"text.gguf", "cut.gguf"}
    assert "wrong magic" in report.invalid["text.gguf"]
    assert "truncated" in report.invalid["cut.gguf"]

    rows = {m.name: m for m in store.list()}
    assert rows["nested/good.gguf"].status == "valid"
    assert rows["nested/good.gguf"].sha256 is not None
    assert rows["cut.gguf"].status == "invalid"
    assert rows["cut.gguf"].sha256 is None  # an invalid file is never hashed or handed on
    assert next(iter(rows)) == "nested/good.gguf"  # valid first


def test_sha256_is_cached_by_size_and_mtime(
    database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> None:
    target = models_dir / "m.gguf"
    target.write_bytes(tiny_gguf().read_bytes())
    store = ModelStore(database.engine, models_dir)
    assert store.scan().hashed == ["m.gguf"]
    assert store.scan().hashed == []  # unchanged: not read again

    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert store.scan().hashed == ["m.gguf"]


def test_removed_file_is_marked_missing_and_comes_back(
    database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> None:
    target = models_dir / "m.gguf"
    target.write_bytes(tiny_gguf().read_bytes())
    store = ModelStore(database.engine, models_dir)
    store.scan()
    target.rename(models_dir.parent / "elsewhere.gguf")
    assert store.scan().missing == ["m.gguf"]
    assert store.get("m.gguf").status == "missing"  # type: ignore[union-attr]
    (models_dir.parent / "elsewhere.gguf").rename(target)
    assert store.scan().valid == ["m.gguf"]


def test_add_copies_after_validation(
    database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> None:
    store = ModelStore(database.engine, models_dir)
    model = store.add(tiny_gguf("src.gguf"), "team/renamed.gguf")
    assert model.name == "team/renamed.gguf"
    assert (models_dir / "team" / "renamed.gguf").is_file()
    assert model.status == "valid"
    assert not list(models_dir.rglob(".partial-*"))


def test_add_refuses_a_clash(
    database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> None:
    store = ModelStore(database.engine, models_dir)
    source = tiny_gguf("a.gguf")
    store.add(source)
    before = (models_dir / "a.gguf").read_bytes()
    other = tiny_gguf("b.gguf", chat_template=False)
    with pytest.raises(ModelStoreError, match="already exists"):
        store.add(other, "a.gguf")
    assert (models_dir / "a.gguf").read_bytes() == before


@pytest.mark.parametrize(
    "name",
    [
        "../escape.gguf",
        "a/../../escape.gguf",
        "/tmp/abs.gguf",
        "..",
        "model.bin",
        " x.gguf",
        "nul\x00.gguf",
    ],
)
def test_add_refuses_names_outside_the_store(
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
    name: str,
) -> None:
    store = ModelStore(database.engine, models_dir)
    with pytest.raises(ModelStoreError):
        store.add(tiny_gguf(), name)
    assert not (models_dir.parent / "escape.gguf").exists()
    assert not Path("/tmp/abs.gguf").exists()
    assert list(models_dir.iterdir()) == []


def test_add_refuses_a_symlink_escape(
    database: Database, models_dir: Path, tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (models_dir / "link").symlink_to(outside)
    store = ModelStore(database.engine, models_dir)
    with pytest.raises(ModelStoreError, match="outside the model store"):
        store.add(tiny_gguf(), "link/evil.gguf")
    assert list(outside.iterdir()) == []


def test_add_refuses_invalid_files(database: Database, models_dir: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\x00" * 3)
    store = ModelStore(database.engine, models_dir)
    with pytest.raises(ModelStoreError, match="not a valid GGUF"):
        store.add(bogus)
    with pytest.raises(ModelStoreError, match="no such file"):
        store.add(tmp_path / "nope.gguf")
    assert list(models_dir.iterdir()) == []


def test_demo_model_is_added_and_checked(database: Database, models_dir: Path) -> None:
    store = ModelStore(database.engine, models_dir)
    model = add_demo_model(store)
    assert model.name == DEMO_FILE
    assert model.sha256 == find_demo_model().sha256
    assert model.architecture == "llama"
    assert add_demo_model(store).id == model.id  # idempotent

    described = describe_model(model, n_gpu_layers=-1, n_ctx=2048)
    assert described["estimate"]["gpu_layers"] == 30
    assert described["estimate"]["vram_bytes"] > described["size_bytes"] * 0.9


def test_demo_model_clash_with_a_different_file(
    database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> None:
    (models_dir / DEMO_FILE).write_bytes(tiny_gguf().read_bytes())
    with pytest.raises(ModelStoreError, match="differs from the packaged demo model"):
        add_demo_model(ModelStore(database.engine, models_dir))
