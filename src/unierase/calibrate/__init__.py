"""``unierase calibrate``: edit settings measured on the model itself (``run.calibrate``)."""

from .run import CalibrationConfig, CalibrationResult, calibrate, recipes_dir

__all__ = ["CalibrationConfig", "CalibrationResult", "calibrate", "recipes_dir"]
