"""The house's rules that code can check: the trainer keeps the loop's state only, every
entry point starts through ``cli.run``, process 0's lines go through ``process_zero``."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _functions(path):
  tree = ast.parse(open(path, encoding="utf-8").read())
  return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_the_trainer_is_short_and_its_functions_shorter():
  for name in ("trainer.py", "train_loop.py"):
    path = os.path.join(ROOT, "kpsem_jax", name)
    assert len(open(path).read().splitlines()) <= 250, name
    long = [(f, n) for f, n in _functions(path) if n > 60]
    assert not long, (name, long)


def test_every_entry_point_starts_through_cli_run():
  mains = [p for p in glob.glob(os.path.join(ROOT, "kpsem_jax", "*.py")) + [
      os.path.join(ROOT, "train.py")] if '\nif __name__ == "__main__":' in open(p).read()]
  assert len(mains) >= 8
  for path in mains:
    text = open(path).read()
    tail = text[text.index('if __name__ == "__main__":'):]
    assert "cli.run(main, define_flags)" in tail, path
    assert "jax_options.configure()" not in text and "cli.prologue()" not in text, path


def test_process_zero_is_asked_in_one_place():
  found = [p for p in glob.glob(os.path.join(ROOT, "kpsem_jax", "**", "*.py"), recursive=True)
           if "process_index() == 0" in open(p).read() or "process_index() != 0" in open(p).read()]
  assert [os.path.basename(p) for p in found] == ["process_zero.py"], found
