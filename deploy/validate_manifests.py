"""Validate rendered Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate).

    python deploy/validate_manifests.py RENDERED.yaml [MORE.yaml ...]

Every object is checked strictly (unknown fields are errors) against the oldest and the newest
Kubernetes version kubernetes-validate knows. Custom resources (KEDA's ScaledObject, the
Prometheus Operator's monitors) have no schema there: they are named and skipped, never passed
silently. Exit status 1 on any error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import all_versions

# API groups of the custom resources the manifests use; their CRDs live in the cluster.
CUSTOM_GROUPS = ("keda.sh", "monitoring.coreos.com")


def objects(paths: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML document in the files, with the file it came from."""
    found = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path, doc))
    return found


def validate(paths: list[Path]) -> int:
    """Print a line per object; the number of objects that failed."""
    versions = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
    checked_versions = [versions[0], versions[-1]]
    failures = 0
    docs = objects(paths)
    if not docs:
        print(f"no Kubernetes objects in {', '.join(map(str, paths))}")
        return 1
    for path, doc in docs:
        kind = doc.get("kind", "?")
        name = (doc.get("metadata") or {}).get("name", "?")
        group = str(doc.get("apiVersion", "")).rpartition("/")[0]
        if group in CUSTOM_GROUPS:
            print(f"skipped {path}: {kind}/{name} ({doc['apiVersion']}: custom resource)")
            continue
        problems = [p for v in checked_versions if (p := problem(doc, v))]
        for text in problems:
            print(f"INVALID {path}: {kind}/{name}: {text}")
        if problems:
            failures += 1
        else:
            print(f"valid   {path}: {kind}/{name} (Kubernetes {' and '.join(checked_versions)})")
    return failures


def problem(doc: dict[str, Any], version: str) -> str | None:
    """Why doc is not a valid object of Kubernetes version, or None."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        return f"(Kubernetes {version}) at {where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError:
        return f"no {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {version}"
    return None


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    return 1 if validate([Path(a) for a in argv]) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
