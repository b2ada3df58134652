"""crosssite: learn one COVID-19 CT classifier from several hospitals (sites)."""

__version__ = "0.1.0"
