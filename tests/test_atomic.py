"""Atomic writes: concurrent writers of one output never leave a corrupt or mixed file or folder."""
import threading

import pandas as pd

import updelta
from updelta.atomic import atomic_dir, write_text


def test_concurrent_folder_writers_leave_one_complete_folder(tmp_path):
    out = tmp_path / "out"
    errors = []

    def writer(k):
        try:
            for i in range(25):
                with atomic_dir(out) as tmp:
                    for j in range(5):
                        (tmp / f"f{j}").write_text(f"{k}-{i}")
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    contents = {(out / f"f{j}").read_text() for j in range(5)}
    assert len(contents) == 1  # every file from the same writer and round
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside


def test_concurrent_result_saves(tmp_path, llama_pair):
    b, f, _, _ = llama_pair
    res = updelta.diff(b, f, spectral="off")
    out, pq = tmp_path / "res", tmp_path / "res.parquet"
    threads = [threading.Thread(target=lambda: [res.save(out), res.save(pq)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    back = updelta.load(out)
    pd.testing.assert_frame_equal(back.tensors, updelta.load(pq).tensors)
    assert len(back.tensors) == len(res.tensors)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".res")]


def test_failed_write_leaves_the_old_file(tmp_path):
    p = tmp_path / "a.txt"
    write_text(p, "old")
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("partial")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert p.read_text() == "old" and not (tmp_path / "d").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]
