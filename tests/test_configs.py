"""``config_base.parse_arg``: the one parser of every config's ``get_config(arg)``."""

import json

import jax
import numpy as np
import pytest

from kpsem_jax import config_base
from kpsem_jax.config_base import load_config, model_spec
from kpsem_jax.models.classifier import create_model
from kpsem_jax.train import trainer


def test_parse_arg_casts_to_the_defaults_types_and_names_bad_options():
  opts = config_base.parse_arg("k=9,fixed,lr=0.01,at=res3", "configs/x.py", k=4, fixed=False,
                          lr=0.05, at="res2", steps=600)
  assert (opts.k, opts.fixed, opts.lr, opts.at, opts.steps) == (9, True, 0.01, "res3", 600)
  assert isinstance(opts.k, int) and isinstance(opts.lr, float)
  assert config_base.parse_arg("fixed=false", "c", fixed=True).fixed is False
  assert config_base.parse_arg("", "c", k=4).k == 4
  with pytest.raises(ValueError, match=r"configs/x.py: unknown option\(s\) \['h'\]; the "
                                       r"options are k=<int>, fixed$"):
    config_base.parse_arg("k=2,h=3", "configs/x.py", k=4, fixed=False)
  with pytest.raises(ValueError, match=r"configs/x.py: 'k=nine': expected k=<int>"):
    config_base.parse_arg("k=nine", "configs/x.py", k=4)
  with pytest.raises(ValueError, match=r"'fixed=maybe': expected fixed=<bool>"):
    config_base.parse_arg("fixed=maybe", "configs/x.py", fixed=False)


def test_every_config_with_variants_parses_them_through_parse_arg():
  assert load_config("synthetic", "tiny").dataset.config == "tiny"
  assert load_config("ucf101", "tiny_model").model.backbone == "resnet3d"
  c = load_config("synthetic_c2d", "c2d_kpsem,grad=paper,clip=0,k=9")
  assert (c.model.kpsem.match_gradient, c.optimizer.clip_grad_norm, c.model.kpsem.num_regions) == (
      "paper", 0.0, 9)
  for name, arg in (("synthetic", "tinyy"), ("ucf101", "tiny"), ("synthetic_c2d", "c2d,x=1")):
    with pytest.raises(ValueError, match=rf"configs/{name}.py: unknown option"):
      load_config(name, arg)


def test_the_readout_reaches_the_model_spec_only_when_it_is_not_the_mean():
  ordered = load_config("synthetic_c2d", "c2d,readout=ordered")
  assert model_spec(ordered)["readout"] == "ordered" and not ordered.model.use_kpsem
  # A mean-readout model's spec (and so its checkpoints' metadata) is as before.
  assert "readout" not in model_spec(load_config("synthetic_c2d", "c2d"))
  assert "readout" not in model_spec(load_config("hmdb51"))


def test_the_order_aware_backbones_differ_from_the_c2d_only_where_they_see_time():
  import jax  # pylint: disable=import-outside-toplevel
  from flax import traverse_util  # pylint: disable=import-outside-toplevel

  def shapes(arg):
    c = load_config("synthetic_c2d", arg)
    model = create_model(**model_spec(c))
    x = jax.ShapeDtypeStruct((1, 8, 64, 64, 3), "float32")
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros(x.shape)))
    return c, {"/".join(k): v.shape for k, v in
               traverse_util.flatten_dict(params["params"]).items()}

  c2d, c2d_shapes = shapes("c2d")
  inflated, inflated_shapes = shapes("inflated")
  assert c2d_shapes.keys() == inflated_shapes.keys()
  differ = sorted(k for k in c2d_shapes if c2d_shapes[k] != inflated_shapes[k])
  # Each block's first convolution: 1x1x1 in the C2D, 3x1x1 in the inflated ResNet; nothing else.
  assert differ == [f"backbone/{s}_B01/conv_a/conv/kernel"
                    for s in ("res2", "res3", "res4", "res5")]
  assert all(c2d_shapes[k][0] == 1 and inflated_shapes[k][0] == 3 for k in differ)
  assert not inflated.model.use_kpsem
  assert load_config("synthetic_c2d", "inflated_kpsem").model.use_kpsem
  assert inflated.model.kpsem_at == c2d.model.kpsem_at == "res2"
  mf, mf_shapes = shapes("mf_kpsem")
  assert mf.model.backbone == "mfnet3d" and mf.model.kpsem_at == "conv2" and mf.model.use_kpsem
  assert any(k.startswith("kpsem/") for k in mf_shapes) and not any(
      k.startswith("kpsem/") for k in shapes("mfnet")[1])
  assert load_config("synthetic_c2d", "mf_kpsem,at=conv3").model.kpsem_at == "conv3"
  with pytest.raises(ValueError, match="at='conv3' is not a stage of inflated_kpsem"):
    load_config("synthetic_c2d", "inflated_kpsem,at=conv3")
  with pytest.raises(ValueError, match="unknown model 'i3d'; choose one of c2d, c2d_kpsem"):
    load_config("synthetic_c2d", "i3d")


def test_paired_mfnet_runs_share_the_backbones_initial_values():
  """Paired suites: MFNet and MF-KPSEM of one seed start from the same backbone
  parameters (Flax draws each module's from the seed and its name)."""
  def backbone(model):
    c = load_config("synthetic_c2d", model)
    m = create_model(**model_spec(c))
    x = jax.numpy.zeros((1, 8, 96, 96, 3))
    return jax.jit(m.init)(jax.random.PRNGKey(c.seed), x)["params"]
  plain, kpsem = backbone("mfnet,size=96"), backbone("mf_kpsem,size=96,at=conv4,g=8")
  assert "kpsem" in kpsem and "kpsem" not in plain
  for a, b in zip(jax.tree.leaves(plain["backbone"]), jax.tree.leaves(kpsem["backbone"])):
    np.testing.assert_array_equal(a, b)


def test_widths_are_set_from_the_command_line_and_old_checkpoints_still_match(tmp_path):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from kpsem_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models import classifier
  values = flags.FlagValues()
  argv = ["train.py", "--config=configs/video_folder.py:small",
          "--config.model.backbone_kwargs.conv1_channels=8",
          "--config.model.backbone_kwargs.stage_channels=(8, 16, 16, 32)"]
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  c = values.config
  assert (c.clip.crop, c.clip.frames, c.batch_size) == (112, 8, 8)
  assert c.model.backbone_kwargs.conv1_channels == 8
  assert tuple(c.model.backbone_kwargs.stage_channels) == (8, 16, 16, 32)
  c.dataset.num_classes = 3
  model = create_model(**model_spec(c))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 8, 112, 112, 3), "float32"))["params"]
  assert shapes["backbone"]["conv1"]["conv"]["kernel"].shape[-1] == 8
  assert shapes["backbone"]["conv5"]["B01"]["conv_m2"]["conv"]["kernel"].shape[-1] == 32
  # The paper-size default spells MFNet's widths; a checkpoint whose metadata left them to
  # the default (every one written before they were fields) is the same model.
  spec = model_spec(load_config("hmdb51"))
  old = dict(spec, backbone_kwargs={})
  assert spec != old and classifier.complete_spec(old) == classifier.complete_spec(spec)
  saved = json.loads(json.dumps(classifier.complete_spec(old)))  # as resume reads metadata
  assert checkpoint.json_differences(saved, classifier.complete_spec(spec)) == []
  wider = dict(spec, backbone_kwargs=dict(spec["backbone_kwargs"], groups=8))
  assert checkpoint.json_differences(saved, classifier.complete_spec(wider)) == [
      "model.backbone_kwargs.groups: checkpoint 16, config 8"]


def test_every_field_of_every_config_has_a_declared_meaning():
  import glob  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(
      os.path.join(config_base.configs_dir(), "*.py")) if not p.endswith("__init__.py"))
  assert {"synthetic", "video_folder", "hmdb51", "synthetic_c2d"} <= set(names)
  for name in names:
    text = config_base.field_help(load_config(name))
    for line in text.splitlines():
      path = line.split("=")[0].strip()[len("--config."):]
      assert any(path == f or path.startswith(f + ".") for f in config_base.FIELDS), (name, path)


def test_the_config_check_names_every_bad_field_in_one_line_each():
  c = load_config("synthetic", "tiny")
  trainer.check_config(c)  # the shipped values pass
  c.optimizer.lr = float("nan")
  c.optimizer.clip_grad_norm = float("inf")
  c.seed = -1
  c.num_train_steps = 0
  c.batch_size = 0
  c.model.conv_strategy = "bogus"
  c.memory_fit = "sometimes"
  c.model.kpsem.match_gradient = "both"
  with pytest.raises(trainer.TrainingError) as error:
    trainer.check_config(c)
  lines = ("error: " + str(error.value)).splitlines()
  assert all(line.startswith("error: config.") for line in lines)
  assert sorted(line.split("=")[0] for line in lines) == sorted(
      f"error: config.{f}" for f in ("optimizer.lr", "optimizer.clip_grad_norm", "seed",
                                     "num_train_steps", "batch_size", "model.conv_strategy",
                                     "memory_fit", "model.kpsem.match_gradient"))
  assert "error: config.optimizer.lr=nan: must be a finite number, at least 0.0" in lines
  assert "error: config.seed=-1: must be an integer, at least 0" in lines
  assert any(l.startswith("error: config.model.conv_strategy='bogus': choose one of auto")
             for l in lines)


def test_config_help_lists_every_field_with_its_meaning_and_rule():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "train.py", "--config=configs/video_folder.py:small",
                        "--config.clip.frames=4", "--config_help"], cwd=repo,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-2000:]
  lines = run.stdout.splitlines()
  assert lines[0].startswith("the fields of configs/video_folder.py:small")
  frames = next(l for l in lines if l.strip().startswith("--config.clip.frames="))
  assert frames.split()[0] == "--config.clip.frames=4" and "frames a clip [>= 1]" in frames
  assert sum(l.strip().startswith("--config.") for l in lines) == len(lines) - 1 > 50


def test_the_configs_choices_are_the_model_codes():
  from kpsem_jax.models import arese, layers  # pylint: disable=import-outside-toplevel
  assert config_base.CONV_STRATEGIES == layers.STRATEGIES
  assert config_base.MATCH_GRADIENTS == arese.MATCH_GRADIENTS
