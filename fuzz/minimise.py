#!/usr/bin/env python3
"""Shrinks a fuzz corpus to a few hundred files that keep (nearly) all of its coverage.

`cargo fuzz cmin` keeps every file that adds a feature, smallest first, which leaves
thousands of files for a target like `config`. This runs libFuzzer's merge only to learn which
edges each file covers, then keeps files greedily by how many uncovered edges they add (the
smaller file on a tie), until every edge is covered or `--max` files are kept.

Usage (from the repository root, after `cargo fuzz build -s none`):
    python3 fuzz/minimise.py TARGET [--max 400] [--dry-run]
"""
import argparse
import os
import subprocess
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("target")
ap.add_argument("--max", type=int, default=400)
ap.add_argument("--dry-run", action="store_true")
args = ap.parse_args()

root = os.path.dirname(os.path.abspath(__file__))
binary = os.path.join(root, "target/x86_64-unknown-linux-gnu/release", args.target)
corpus = os.path.join(root, "corpus", args.target)

with tempfile.TemporaryDirectory() as tmp:
    control = os.path.join(tmp, "control")
    empty = os.path.join(tmp, "empty")
    os.mkdir(empty)
    subprocess.run(
        [binary, "-merge=1", "-use_counters=0", f"-merge_control_file={control}", empty, corpus],
        check=True,
        capture_output=True,
    )
    lines = open(control, encoding="utf-8", errors="replace").read().splitlines()

count = int(lines[0])
files = lines[2 : 2 + count]
cover = {}
for line in lines[2 + count :]:
    parts = line.split()
    if parts and parts[0] == "COV":
        cover[int(parts[1])] = set(map(int, parts[2:]))

sizes = {i: os.path.getsize(files[i]) for i in cover}
wanted = set().union(*cover.values()) if cover else set()
covered, keep = set(), []
while len(keep) < args.max and covered != wanted:
    best = max(cover, key=lambda i: (len(cover[i] - covered), -sizes[i]))
    if not cover[best] - covered:
        break
    keep.append(best)
    covered |= cover[best]

kept = {files[i] for i in keep}
for f in [] if args.dry_run else os.listdir(corpus):
    path = os.path.join(corpus, f)
    if path not in kept:
        os.remove(path)
print(f"{args.target}: kept {len(kept)} files covering {len(covered)} of {len(wanted)} edges")
