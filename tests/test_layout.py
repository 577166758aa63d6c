"""The house's rules that code can check: imports go one way between the wings, the
trainer keeps the loop's state only, every entry point starts through ``cli.run``, process
0's lines go through ``process_zero``, and no generic top-level package is installed."""

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
    path = os.path.join(ROOT, "kpsem_jax", "train", name)
    assert len(open(path).read().splitlines()) <= 250, name
    long = [(f, n) for f, n in _functions(path) if n > 60]
    assert not long, (name, long)


def test_every_entry_point_starts_through_cli_run():
  mains = [p for p in glob.glob(os.path.join(ROOT, "kpsem_jax", "**", "*.py"), recursive=True)
           + [os.path.join(ROOT, "train.py")] if '\nif __name__ == "__main__":' in open(p).read()]
  assert len(mains) >= 8
  for path in mains:
    text = open(path).read()
    tail = text[text.index('if __name__ == "__main__":'):]
    assert "cli.run(main, define_flags)" in tail, path
  # A package run as a command (python -m kpsem_jax.experiments) starts the same way.
    assert "jax_options.configure()" not in text and "cli.prologue()" not in text, path
  package_main = open(os.path.join(ROOT, "kpsem_jax", "experiments", "__main__.py")).read()
  assert "cli.run(runner.main, runner.define_flags)" in package_main


def test_process_zero_is_asked_in_one_place():
  found = [p for p in glob.glob(os.path.join(ROOT, "kpsem_jax", "**", "*.py"), recursive=True)
           if "process_index() == 0" in open(p).read() or "process_index() != 0" in open(p).read()]
  assert [os.path.basename(p) for p in found] == ["process_zero.py"], found


# The wings in the order imports may go (config -> data -> model -> training -> inference ->
# experiments -> the commands); the shared helpers import no wing but the config's.
WINGS = ["kpsem_jax.config_base", "kpsem_jax.data", "kpsem_jax.models", "kpsem_jax.train",
         "kpsem_jax.inference", "kpsem_jax.experiments", "commands"]
HELPERS = {"kpsem_jax.atomic", "kpsem_jax.host", "kpsem_jax.native", "kpsem_jax.workdir_lock",
           "kpsem_jax.preemption", "kpsem_jax.process_zero", "kpsem_jax.jax_options",
           "kpsem_jax.cli"}


def _wing(module):
  """The wing of a module of the package (``data/``'s builders are the data wing's)."""
  if module.startswith("kpsem_jax.builders"):
    return "kpsem_jax.data"
  for wing in WINGS[:-1]:
    if module == wing or module.startswith(wing + "."):
      return wing
  return "helpers" if module in HELPERS else "commands"


def _package_imports(path):
  """Every module of the package ``path`` imports, at any depth of the file."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  def is_module(m):
    path = os.path.join(ROOT, *m.split("."))
    return os.path.exists(path + ".py") or os.path.isdir(path) or m.startswith("kpsem_jax.builders")
  return {m for m in found if m.startswith("kpsem_jax.") and is_module(m)}


def _modules():
  files = glob.glob(os.path.join(ROOT, "kpsem_jax", "**", "*.py"), recursive=True)
  files += glob.glob(os.path.join(ROOT, "data", "**", "*.py"), recursive=True)
  for path in files:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    module = "kpsem_jax.builders" + rel[len("data"):] if rel.startswith("data") else rel
    yield module.removesuffix(".__init__"), path


def test_imports_go_one_way_between_the_wings():
  backwards = []
  for module, path in _modules():
    if module.startswith("kpsem_jax.testing"):
      continue
    for imported in _package_imports(path):
      assert not imported.startswith("kpsem_jax.testing"), (module, imported)
      mine, theirs = _wing(module), _wing(imported)
      if theirs in ("helpers", "kpsem_jax.config_base") or mine == theirs:
        continue
      if mine == "helpers" or WINGS.index(theirs) > WINGS.index(mine):
        backwards.append(f"{module} -> {imported}")
  assert not backwards, backwards
  # The check sees imports: the data wing's builders import its base, the trainer the data.
  assert "kpsem_jax.data.video_builder" in _package_imports(
      os.path.join(ROOT, "data", "ucf101", "ucf101_dataset_builder.py"))
  assert _wing("kpsem_jax.data.input_pipeline") == "kpsem_jax.data"
