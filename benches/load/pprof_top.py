#!/usr/bin/env python3
"""Top functions of a Go CPU profile (the pprof format Traefik's /debug/pprof/profile writes),
without the Go toolchain: flat and cumulative share of the samples, heaviest first.

  python3 benches/load/pprof_top.py PROFILE.pb.gz [N] [--focus SUBSTRING]

`--focus` keeps only the samples whose stack has a function containing SUBSTRING (e.g.
`forwardAuth`), to see what one middleware costs. Format: github.com/google/pprof
proto/profile.proto (Profile.sample = 2, .location = 4, .function = 5, .string_table = 6).
"""

import collections
import gzip
import sys


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def fields(buf):
    """(field number, wire type, value) of one protobuf message; value: int or bytes."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = varint(buf, i)
        elif wire == 2:
            n, i = varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield num, wire, v


def ints(wire, v):
    """A repeated integer field, packed or not."""
    if wire == 0:
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = varint(v, i)
        out.append(x)
    return out


def load(path):
    data = gzip.open(path).read()
    samples, locations, functions, strings = [], {}, {}, []
    for num, wire, v in fields(data):
        if num == 2:
            locs, values = [], []
            for n, w, x in fields(v):
                if n == 1:
                    locs += ints(w, x)
                elif n == 2:
                    values += ints(w, x)
            samples.append((locs, values))
        elif num == 4:
            loc_id, funcs = 0, []
            for n, w, x in fields(v):
                if n == 1:
                    loc_id = x
                elif n == 4:
                    funcs += [y for m, _, y in fields(x) if m == 1]
            locations[loc_id] = funcs
        elif num == 5:
            fid = name = 0
            for n, w, x in fields(v):
                if n == 1:
                    fid = x
                elif n == 2:
                    name = x
            functions[fid] = name
        elif num == 6:
            strings.append(v.decode("utf-8", "replace"))
    name = lambda fid: strings[functions.get(fid, 0)]
    stacks = []
    for locs, values in samples:
        # Leaf first; a location holds inlined functions, innermost first.
        stack = [name(f) for loc in locs for f in locations.get(loc, [])]
        stacks.append((stack, values[-1] if values else 1))
    return stacks


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    focus = None
    if "--focus" in sys.argv:
        focus = sys.argv[sys.argv.index("--focus") + 1]
        args.remove(focus)
    path, top = args[0], int(args[1]) if len(args) > 1 else 30
    stacks = load(path)
    total = sum(v for _, v in stacks) or 1
    if focus:
        stacks = [(s, v) for s, v in stacks if any(focus in f for f in s)]
    flat, cum = collections.Counter(), collections.Counter()
    for stack, v in stacks:
        if stack:
            flat[stack[0]] += v
        for f in set(stack):
            cum[f] += v
    kept = sum(v for _, v in stacks)
    print(f"{path}: {total / 1e9:.2f} s of CPU sampled"
          + (f"; {100 * kept / total:.1f}% under {focus!r}" if focus else ""))
    print(f"{'flat%':>6} {'cum%':>6}  function")
    for f, v in cum.most_common(top):
        print(f"{100 * flat[f] / total:6.1f} {100 * v / total:6.1f}  {f}")


if __name__ == "__main__":
    main()
