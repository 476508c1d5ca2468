"""Apache Airflow provider for Limio's Orders API."""

from __future__ import annotations

__version__ = "0.1.0"
