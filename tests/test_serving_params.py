"""The serving parameters have one definition (app/engine/serving.py): the deployments
table, the supervisor's view of it, the `herd worker` flags and the engine's load options
all carry the same fields, and values survive every hop unchanged."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from sqlalchemy import inspect

from app.cli import build_parser
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db.database import Database
from app.engine.loader import LoadOptions
from app.engine.serving import SERVING_FIELDS, ServingParams, serving_values_from
from app.store.catalog import ModelStore
from app.supervisor.processes import worker_argv
from app.supervisor.records import DesiredDeployment, SupervisorRecords
from app.worker.options import WorkerOptions
from tests.test_deployments import store  # noqa: F401  (fixture: tiny.gguf in the store)

# Every field away from its default, so that a hop that drops one shows.
ODD = ServingParams(
    n_gpu_layers=3,
    n_ctx=192,
    parallel=3,
    threads=2,
    main_gpu=1,
    tensor_split=(3.0, 1.0),
    embeddings=True,
    pooling="cls",
    lookup_drafts=5,
)


def test_every_field_is_set_away_from_its_default() -> None:
    assert all(getattr(ODD, f.name) != f.default for f in fields(ServingParams))


def test_every_place_derives_from_the_one_definition() -> None:
    for derived in (ServingSettings, WorkerOptions, DesiredDeployment, LoadOptions):
        assert issubclass(derived, ServingParams)
        assert set(SERVING_FIELDS) <= {f.name for f in fields(derived)}
    worker = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
        if a.prog.endswith(" worker")
    )
    flags = {o for action in worker._actions for o in action.option_strings}
    assert {"--" + name.replace("_", "-") for name in SERVING_FIELDS} <= flags


def test_values_survive_table_supervisor_and_worker_flags(
    database: Database,
    store: ModelStore,  # noqa: F811
) -> None:
    columns = {c["name"] for c in inspect(database.engine).get_columns("deployments")}
    assert set(SERVING_FIELDS) <= columns

    created = Deployments(database.engine).create(
        DeploymentRequest("odd", ServingSettings(model="tiny.gguf", **ODD.serving_values()))
    )
    assert created.serving.serving_params() == ODD
    with database.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO placements (deployment_id, replica, node) VALUES (%s, 0, 'n')",
            (created.id,),
        )
    desired = SupervisorRecords(database.engine, "n").desired()[created.id]
    assert desired.serving_params() == ODD

    argv = worker_argv(desired, "127.0.0.1", Path("w.log"))
    args = build_parser().parse_args(argv[argv.index("worker") :])
    assert ServingParams(**serving_values_from(args)) == ODD
    options = WorkerOptions(model=args.model, **serving_values_from(args))
    assert LoadOptions(Path(args.model), **options.serving_values()).serving_params() == ODD


def test_defaults_give_no_flags_and_parse_back_to_defaults() -> None:
    assert ServingParams().worker_flags() == []
    args = build_parser().parse_args(["worker", "--model", "m.gguf"])
    assert ServingParams(**serving_values_from(args)) == ServingParams()


def test_bad_flag_values_are_refused_with_the_reason(capsys: object) -> None:
    import pytest

    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--model", "m", "--tensor-split", "1,x"])
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "--tensor-split" in err and "not comma-separated numbers" in err


def test_the_config_file_and_admin_api_take_every_field() -> None:
    from app.control.aliases import AliasSettings
    from app.control.specs import AliasSpec, DeploymentSpec

    assert {"model", *SERVING_FIELDS} <= set(DeploymentSpec.model_fields)
    spec = DeploymentSpec(alias="a", model="m.gguf", **ODD.serving_values())
    assert spec.serving().serving_params() == ODD
    assert set(AliasSpec.model_fields) == {f.name for f in fields(AliasSettings)}
