"""Backends: one module per way of starting a retrain (command, http, airflow, kubernetes)."""
