"""ORM tables: the schema every herd process and analyst shares, one module per owner area.

The schema itself is created only by Alembic revisions under migrations/; these classes must
match them (a test runs Alembic's autogenerate and expects no difference). Importing this
package imports every module, so Base.metadata (Alembic's target) holds every table.
Each table has one module that writes it; tests/test_table_owners.py names it.
"""

from __future__ import annotations

from app.db.tables.analytics import (
    FeedbackCorrection,
    FeedbackReview,
    FeedbackTag,
    LatencyHourly,
    RequestSession,
    RequestsHourly,
    RetrainingDecision,
    SessionsHourly,
)
from app.db.tables.base import NAMING, Base
from app.db.tables.batches import Batch, BatchRequest, File
from app.db.tables.control import Alias, ApiKey, AuditLog, Deployment, LoginAttempt, Operator
from app.db.tables.datasets import Dataset
from app.db.tables.evaluation import Evaluation, EvaluationAnswer
from app.db.tables.fleet import Node, Placement, ProcessRestart, Worker, WorkerProcess
from app.db.tables.gateway import (
    ApiKeyUsage,
    Feedback,
    GatewayDemand,
    Message,
    Request,
    SemanticCacheEntry,
)
from app.db.tables.jobs import Job
from app.db.tables.rollouts import Rollout
from app.db.tables.store import Model

__all__ = [
    "NAMING",
    "Alias",
    "ApiKey",
    "ApiKeyUsage",
    "AuditLog",
    "Base",
    "Batch",
    "BatchRequest",
    "Dataset",
    "Deployment",
    "Evaluation",
    "EvaluationAnswer",
    "Feedback",
    "FeedbackCorrection",
    "FeedbackReview",
    "FeedbackTag",
    "File",
    "GatewayDemand",
    "Job",
    "LatencyHourly",
    "LoginAttempt",
    "Message",
    "Model",
    "Node",
    "Operator",
    "Placement",
    "ProcessRestart",
    "Request",
    "RequestSession",
    "RequestsHourly",
    "RetrainingDecision",
    "Rollout",
    "SemanticCacheEntry",
    "SessionsHourly",
    "Worker",
    "WorkerProcess",
]
