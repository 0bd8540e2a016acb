"""Request bodies of the REST API (pydantic); responses are plain dicts built by the services' ``*_out``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ml.steps import REPRESENTATION_SOURCES
from ml.strategies import QUEUE_STRATEGIES

# The queue strategies of ml.strategies (Literal of a tuple: the same values, listed once).
Strategy = Literal[QUEUE_STRATEGIES]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttributeIn(Strict):
    name: str = Field(min_length=1, max_length=64)
    kind: Literal["categorical", "ordinal", "continuous"] = "categorical"
    levels: list[str] | None = Field(None, max_length=1000)
    low: float | None = None
    high: float | None = None


class DigitsSpec(Strict):
    source: Literal["digits"]


class ShapesSpec(Strict):
    source: Literal["shapes"]
    n: int = Field(5000, ge=1, le=200_000)
    seed: int = 0
    size: int = Field(32, ge=16, le=512)
    rotation_range: float = Field(
        360.0, ge=0, le=360, description="Sprites turn by up to this many degrees (0: all upright)."
    )


class MnistSpec(Strict):
    source: Literal["mnist"]
    path: str = Field(min_length=1)
    split: Literal["train", "test"] = "train"
    limit: int | None = Field(None, ge=1)


class ImagesSpec(Strict):
    source: Literal["images"]
    path: str = Field(min_length=1)
    size: int | None = Field(None, ge=1, le=4096)
    mode: Literal["L", "RGB"] = "L"


class EmbeddingsSpec(Strict):
    source: Literal["embeddings"]
    path: str = Field(min_length=1)
    images: str | None = None
    size: int | None = Field(None, ge=1, le=4096)
    mode: Literal["L", "RGB"] = "L"


DatasetSpec = Annotated[
    DigitsSpec | ShapesSpec | MnistSpec | ImagesSpec | EmbeddingsSpec, Field(discriminator="source")
]


class RepresentationIn(BaseModel):
    """The base representation: its source plus free configuration (e.g. latent_dim) for the worker."""

    model_config = ConfigDict(extra="allow")
    source: Literal[REPRESENTATION_SOURCES] = "vae"  # type: ignore[valid-type]


class ProjectSettingsIn(BaseModel):
    """Per-project overrides of the global settings; other keys are kept for the worker."""

    model_config = ConfigDict(extra="allow")
    retrain_every: int | None = Field(None, ge=1)
    lease_seconds: int | None = Field(None, ge=5, le=7 * 24 * 3600)
    eval_fraction: float | None = Field(None, ge=0.0, le=1.0)
    skip_hours: float | None = Field(
        None,
        ge=0,
        le=30 * 24,
        description="How long a skipped item stays away from the expert who skipped it "
        "(hours; 0: it may come straight back). Unset: the rest of the day (UTC).",
    )
    activation_margin: float | None = Field(
        None,
        ge=-100,
        le=100,
        description="Points by which a retrained version must reach raw z's metric and the live version's "
        "(on the same eval items) to go live; otherwise it is kept but not activated. Unset: 0.",
    )
    overlap: int | None = Field(
        None,
        ge=1,
        le=20,
        description="How many different experts label each item before it counts as labelled (default 1).",
    )
    consensus: Literal["dawid_skene", "vote", "last"] | None = Field(
        None,
        description="What the lens trains on when experts disagree: dawid_skene (each expert's reliability "
        "estimated, the default), vote (the labels' shares) or last (the latest label).",
    )
    lens: dict[str, Any] | None = Field(
        None,
        description="Lens hyper-parameters for retrains (checked when saved; 422 names a bad key or value): "
        "flow (planar | coupling | spline | auto), alpha (number ≥ 0 | auto), dims_per_attribute, align, n_flows, "
        "hidden, epochs, warm_epochs, lr, weight_decay, batch_size, labelled_batch_size, threads, compile_step, seed, "
        "pseudo_label_threshold, pseudo_label_weight, consistency_weight, mixup_weight, propagation_weight, "
        "fused_step, selection_folds, selection_pool, selection_batched.",
        examples=[{"flow": "auto", "alpha": "auto", "dims_per_attribute": 2}],
    )


class ProjectIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    dataset: DatasetSpec | None = None
    attributes: list[AttributeIn] = Field(min_length=1, max_length=100)
    representation: RepresentationIn = Field(default_factory=RepresentationIn)
    strategy: Strategy = "auto"
    settings: ProjectSettingsIn = Field(default_factory=ProjectSettingsIn)


class ProjectPatch(Strict):
    name: str | None = Field(None, min_length=1, max_length=100)
    attributes: list[AttributeIn] | None = Field(None, min_length=1, max_length=100)
    representation: RepresentationIn | None = None
    strategy: Strategy | None = None
    settings: ProjectSettingsIn | None = None


class ImportIn(Strict):
    dataset: DatasetSpec


class LabelIn(Strict):
    values: dict[str, Any]
    idempotency_key: str | None = Field(None, min_length=1, max_length=128)
    lease_id: str | None = Field(None, min_length=1, max_length=64)
    project_id: int | None = None


MAX_TRANSFORM_ITEMS = 10_000  # per request (app.services.transform checks the same bound)


class TransformIn(Strict):
    """New data for ``POST /projects/{pid}/transform``: embeddings of the project's base, or images
    (base64 PNG, the size and mode of the project's images); exactly one of the two."""

    embeddings: list[list[float]] | None = Field(None, max_length=MAX_TRANSFORM_ITEMS)
    images: list[str] | None = Field(None, max_length=MAX_TRANSFORM_ITEMS)
    model_version: int | None = Field(None, ge=1, description="a version number of the project (default: active)")


class ResolveIn(Strict):
    values: dict[str, Any] = Field(description="the adjudicated value per attribute (level names / numbers)")


class LabelImportRow(Strict):
    item_id: int | None = None
    source_index: int | None = None
    values: dict[str, Any]
    eval: bool = False


class LabelImportIn(Strict):
    labels: list[LabelImportRow] = Field(min_length=1, max_length=200_000)


class JobIn(Strict):
    kind: Literal["pretrain", "retrain", "score", "evaluate", "experiment"]
    params: dict[str, Any] = Field(default_factory=dict)
