"""Model-family naming conventions, as data (one JSON file per family)."""
