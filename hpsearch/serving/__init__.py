"""Serving: registering the champion, the pyfunc model MLflow serves, predictions and the
checking of client images.

Names are imported on first use, so importing this package loads no torch.
"""

from hpsearch._imports import lazy_exports

_EXPORTS = {
    "NormalizingClassifier": "classifier",
    "MAX_BATCH": "images", "InvalidImages": "images", "accepted_shapes": "images",
    "to_unit_batch": "images",
    "Prediction": "predict", "load_serving_model": "predict", "predict_files": "predict",
    "read_images": "predict",
    "Registration": "registration", "register_champion": "registration",
    "CHAMPION_ALIAS": "uris", "model_uri": "uris",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
