"""What a tensor is in its model: naming (family data, one JSON file per family, and the structure derived from
transformers' own classes), attention heads and experts (docs/families.md)."""
from updelta.families import data, naming

naming.STRUCTURE.append(data.resolve)  # `naming.resolve_family` falls back to the classes (families/data.py)
