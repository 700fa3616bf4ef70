"""Rewrite the committed task samples in this folder from the generators: `.venv/bin/python data/regenerate.py`."""
from pathlib import Path

from updelta.train.tasks import write_samples

if __name__ == "__main__":
    for path in write_samples(Path(__file__).resolve().parent):
        print(path)
