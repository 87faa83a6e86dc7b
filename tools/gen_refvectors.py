#!/usr/bin/env python3
"""Generates tests/refvectors/*.json: the executable spec's (spec/dropblock_ref.py) answers to
every question the Python suites ask it, so that they run without the spec beside the checkout.

  python3 tools/gen_refvectors.py [--spec-dir DIR] [--out DIR]

DIR defaults: $DROPBLOCK_SPEC_DIR, else ../shared/spec beside the repository; the output goes to
tests/refvectors/ (each file is rewritten whole, so a question no suite asks any more disappears).

Each suite lists its questions in reference_requests() (tests/refvectors.py builds them); the
files are:
  cli.json     test_cli.py and test_cli_daemon.py
  daemon.json  test_daemon.py
  python.json  test_python.py
One file is {"generated_by", "answers": [{"request", "answer"}, ...]} (tests/refvectors/README.md
says what the fields hold).
"""
import argparse
import concurrent.futures as cf
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import refvectors as R  # noqa: E402

SUITES = {"cli": ["test_cli", "test_cli_daemon"], "daemon": ["test_daemon"], "python": ["test_python"]}


def questions(modules):
    """Every request the modules list, once each, with inputs merged to the longest prefix needed."""
    reqs = {}
    for name in modules:
        mod = __import__(name)
        for r in mod.reference_requests():
            reqs.setdefault(R.key(r), r)
    inputs = R.needed_inputs(reqs.values())
    plain = [r for r in reqs.values() if r["kind"] != "input"]
    return plain, inputs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec-dir", default=os.environ.get("DROPBLOCK_SPEC_DIR") or
                    os.path.join(ROOT, "..", "shared", "spec"))
    ap.add_argument("--out", default=R.DATA)
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.spec_dir, "dropblock_ref.py")):
        sys.exit("gen_refvectors: %s/dropblock_ref.py not found (pass --spec-dir or set DROPBLOCK_SPEC_DIR)"
                 % a.spec_dir)
    ref = R.load_spec(a.spec_dir)
    os.makedirs(a.out, exist_ok=True)
    for suite, modules in SUITES.items():
        t0 = time.time()
        plain, inputs = questions(modules)
        with cf.ThreadPoolExecutor(a.jobs) as pool:   # the cli questions run the spec as a process
            answers = list(pool.map(lambda r: R.compute(ref, r), plain))
        rows = [{"request": r, "answer": e} for r, e in zip(plain, answers)]
        rows += [{"request": r, "answer": R.compute(ref, r, n)} for r, n in inputs.values()]
        rows.sort(key=lambda row: R.key(row["request"]))
        path = os.path.join(a.out, suite + ".json")
        with open(path, "w") as f:
            f.write('{"generated_by": %s,\n "answers": [\n' % json.dumps(
                "python3 tools/gen_refvectors.py (dropblock_ref.py); suites: " + ", ".join(modules)))
            f.write(",\n".join("  " + json.dumps(row, sort_keys=True) for row in rows))
            f.write("\n]}\n")
        print("gen_refvectors: %s: %d answers, %d bytes (%.1f s)" % (os.path.relpath(path, ROOT), len(rows),
                                                                    os.path.getsize(path), time.time() - t0))


if __name__ == "__main__":
    main()
