"""Remote reads: updelta's range-request reads of a checkpoint served over HTTP, against a plain sequential download
of the same bytes from the same loopback server, in one run.

    python benchmarks/bench_remote.py [--layers 2] [--tiny]

The server (tests/io/rangeserver.py, a threaded http.server that honours Range) runs in this process on
127.0.0.1 and serves a 0.5B-shape bf16 pair (Qwen2-0.5B tensor shapes, 5 shards with an index). Measured, best of
`--repeat`, with the files in the page cache:

- download: every shard of the fine-tune fetched with one GET each, read in 1 MiB chunks (urllib), bytes discarded;
- read: the same shards through `open_checkpoint(URL)`, every tensor read block by block (one range request per
  block of `--block-elems` elements), serially;
- diff: `updelta.diff(URL/base, URL/ft)` (spectral off), which reads both checkpoints (twice the bytes).

Each line gives MB/s and the ratio to the download. Client and server share the process (and the GIL), which
costs both methods alike; a real object store sits behind a network, where per-request latency weighs more.
"""
from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "io"))
from _common import DATA, ensure_pair  # noqa: E402
import rangeserver  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="64-wide tensors (a quick check that it runs)")
    ap.add_argument("--block-elems", type=int, default=1 << 18)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import updelta
    from updelta.io import open_checkpoint

    folder = DATA / f"remote_{args.layers}{'_tiny' if args.tiny else ''}"
    if not (folder / "ft").exists():
        ensure_pair(folder, args.layers, tiny=args.tiny)
    shards = sorted((folder / "ft").glob("*.safetensors"))
    nbytes = sum(p.stat().st_size for p in shards)
    for p in shards + sorted((folder / "base").glob("*.safetensors")):  # page cache
        p.read_bytes()

    with rangeserver.serve(folder) as (url, stats):
        def download():
            for p in shards:
                with urllib.request.urlopen(f"{url}/ft/{p.name}") as r:
                    while r.read(1 << 20):
                        pass

        def read():
            with open_checkpoint(f"{url}/ft") as ck:
                buf = None
                for t in ck.tensors.values():
                    for a in range(0, t.numel, args.block_elems):
                        t.read(a, min(args.block_elems, t.numel - a), buf)

        def diff():
            updelta.diff(f"{url}/base", f"{url}/ft", spectral="off", progress=False, block_elems=args.block_elems)

        t_dl = best(download, args.repeat)
        r0 = stats["requests"]
        t_rd = best(read, args.repeat)
        reqs = (stats["requests"] - r0) // args.repeat
        t_diff = best(diff, 1)

    mb = nbytes / 1e6
    print(f"bench_remote: {len(shards)} shards, {mb:.1f} MB per checkpoint, block {args.block_elems} elements, "
          f"loopback HTTP")
    print(f"  download (1 GET per shard)     {t_dl:7.3f} s  {mb / t_dl:8.1f} MB/s  ratio 1.00")
    print(f"  updelta read ({reqs} requests) {t_rd:7.3f} s  {mb / t_rd:8.1f} MB/s  ratio {t_dl / t_rd:.2f}")
    print(f"  updelta diff (2 checkpoints)   {t_diff:7.3f} s  {2 * mb / t_diff:8.1f} MB/s  ratio "
          f"{(2 * t_dl) / t_diff:.2f}")


if __name__ == "__main__":
    main()
