"""The README's promises name tests that exist."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _test_functions(path):
  tree = ast.parse(open(path, encoding="utf-8").read())
  return {node.name for node in tree.body
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_promise_names_a_test_that_exists():
  readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  section = readme.split("## What you can rely on")[1].split("\n## ")[0]
  promises = [p for p in section.split("\n- ")[1:]]
  assert len(promises) >= 8
  missing = []
  for promise in promises:
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", promise)
    assert named, f"a promise names no test: {promise[:80]}"
    for file, name in named:
      path = os.path.join(ROOT, "tests", file)
      if not os.path.isfile(path) or name not in _test_functions(path):
        missing.append(f"{file}::{name}")
  assert not missing, missing
