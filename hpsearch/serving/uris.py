"""Names of registered champions, without importing MLflow or torch."""

from __future__ import annotations

__all__ = ["CHAMPION_ALIAS", "model_uri"]

CHAMPION_ALIAS = "champion"


def model_uri(model: str | None = None, run_id: str | None = None) -> str:
    """``models:/NAME@ALIAS`` for a registered model (alias defaults to champion), or
    ``runs:/RUN_ID/model`` for the model logged in a run; a full URI is kept as is."""
    if run_id:
        return f"runs:/{run_id}/model"
    if model and ":/" in model:
        return model
    name, _, alias = (model or "hpsearch-fashion_mnist").partition("@")
    return f"models:/{name}@{alias or CHAMPION_ALIAS}"
