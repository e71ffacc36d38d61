"""Names of registered champions (MLflow is imported only to look them up; no torch)."""

from __future__ import annotations

from hpsearch.errors import HpsearchError
from hpsearch.redact import redact_url

__all__ = ["CHAMPION_ALIAS", "champion_model", "check_registered", "model_uri"]

CHAMPION_ALIAS = "champion"


def model_uri(model: str | None = None, run_id: str | None = None) -> str:
    """``models:/NAME@ALIAS`` for a registered model (alias defaults to champion), or
    ``runs:/RUN_ID/model`` for the model logged in a run; a full URI is kept as is.

    Raises:
        ValueError: neither ``model`` nor ``run_id`` is given.
    """
    if run_id:
        return f"runs:/{run_id}/model"
    if not model:
        raise ValueError("name a registered model or a run")
    if ":/" in model:
        return model
    name, _, alias = model.partition("@")
    return f"models:/{name}@{alias or CHAMPION_ALIAS}"


def champion_model(tracking_uri: str) -> str:
    """The registered model whose ``champion`` alias was set last in the tracking store: the
    study the user ran last, whatever its name or data set.

    Raises:
        HpsearchError: no registered model has a champion; the message lists the registered
            models there are.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    models = client.search_registered_models()
    champions = [(client.get_model_version_by_alias(m.name, CHAMPION_ALIAS), m.name)
                 for m in models if CHAMPION_ALIAS in (m.aliases or {})]
    if not champions:
        raise HpsearchError(f"no registered model has the alias {CHAMPION_ALIAS!r} in "
                            f"{redact_url(tracking_uri)}; {_registered(models)}; run "
                            "`hpsearch run` first, or pass --model and --tracking-uri")
    return max(champions, key=lambda pair: pair[0].creation_timestamp)[1]


def check_registered(uri: str, tracking_uri: str) -> None:
    """Raise HpsearchError, listing the registered models there are, unless ``uri``
    (``models:/NAME@ALIAS``) names a registered model version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not uri.startswith("models:/") or "@" not in uri:
        return
    name, alias = uri[len("models:/"):].split("@", 1)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise HpsearchError(
            f"no registered model {name!r} with alias {alias!r} in {redact_url(tracking_uri)}; "
            f"{_registered(client.search_registered_models())}; pass --model and "
            "--tracking-uri") from None


def _registered(models) -> str:
    described = [f"{m.name} ({', '.join(f'@{a}' for a in sorted(m.aliases or {})) or 'no alias'})"
                 for m in models]
    return f"registered models: {', '.join(described)}" if described else "no registered model"
