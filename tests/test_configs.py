"""``configs/common.parse_arg``: the one parser of every config's ``get_config(arg)``."""

import jax
import numpy as np
import pytest

from configs import common
from kpsem_jax import trainer


def test_parse_arg_casts_to_the_defaults_types_and_names_bad_options():
  opts = common.parse_arg("k=9,fixed,lr=0.01,at=res3", "configs/x.py", k=4, fixed=False,
                          lr=0.05, at="res2", steps=600)
  assert (opts.k, opts.fixed, opts.lr, opts.at, opts.steps) == (9, True, 0.01, "res3", 600)
  assert isinstance(opts.k, int) and isinstance(opts.lr, float)
  assert common.parse_arg("fixed=false", "c", fixed=True).fixed is False
  assert common.parse_arg("", "c", k=4).k == 4
  with pytest.raises(ValueError, match=r"configs/x.py: unknown option\(s\) \['h'\]; the "
                                       r"options are k=<int>, fixed$"):
    common.parse_arg("k=2,h=3", "configs/x.py", k=4, fixed=False)
  with pytest.raises(ValueError, match=r"configs/x.py: 'k=nine': expected k=<int>"):
    common.parse_arg("k=nine", "configs/x.py", k=4)
  with pytest.raises(ValueError, match=r"'fixed=maybe': expected fixed=<bool>"):
    common.parse_arg("fixed=maybe", "configs/x.py", fixed=False)


def test_every_config_with_variants_parses_them_through_parse_arg():
  assert trainer.load_config("synthetic", "tiny").dataset.config == "tiny"
  assert trainer.load_config("ucf101", "tiny_model").model.backbone == "resnet3d"
  c = trainer.load_config("synthetic_c2d", "c2d_kpsem,grad=paper,clip=0,k=9")
  assert (c.model.kpsem.match_gradient, c.optimizer.clip_grad_norm, c.model.kpsem.num_regions) == (
      "paper", 0.0, 9)
  for name, arg in (("synthetic", "tinyy"), ("ucf101", "tiny"), ("synthetic_c2d", "c2d,x=1")):
    with pytest.raises(ValueError, match=rf"configs/{name}.py: unknown option"):
      trainer.load_config(name, arg)


def test_the_readout_reaches_the_model_spec_only_when_it_is_not_the_mean():
  ordered = trainer.load_config("synthetic_c2d", "c2d,readout=ordered")
  assert trainer.model_spec(ordered)["readout"] == "ordered" and not ordered.model.use_kpsem
  # A mean-readout model's spec (and so its checkpoints' metadata) is as before.
  assert "readout" not in trainer.model_spec(trainer.load_config("synthetic_c2d", "c2d"))
  assert "readout" not in trainer.model_spec(trainer.load_config("hmdb51"))


def test_the_order_aware_backbones_differ_from_the_c2d_only_where_they_see_time():
  import jax  # pylint: disable=import-outside-toplevel
  from flax import traverse_util  # pylint: disable=import-outside-toplevel

  def shapes(arg):
    c = trainer.load_config("synthetic_c2d", arg)
    model = trainer.create_model(**trainer.model_spec(c))
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
  assert trainer.load_config("synthetic_c2d", "inflated_kpsem").model.use_kpsem
  assert inflated.model.kpsem_at == c2d.model.kpsem_at == "res2"
  mf, mf_shapes = shapes("mf_kpsem")
  assert mf.model.backbone == "mfnet3d" and mf.model.kpsem_at == "conv2" and mf.model.use_kpsem
  assert any(k.startswith("kpsem/") for k in mf_shapes) and not any(
      k.startswith("kpsem/") for k in shapes("mfnet")[1])
  assert trainer.load_config("synthetic_c2d", "mf_kpsem,at=conv3").model.kpsem_at == "conv3"
  with pytest.raises(ValueError, match="at='conv3' is not a stage of inflated_kpsem"):
    trainer.load_config("synthetic_c2d", "inflated_kpsem,at=conv3")
  with pytest.raises(ValueError, match="unknown model 'i3d'; choose one of c2d, c2d_kpsem"):
    trainer.load_config("synthetic_c2d", "i3d")


def test_paired_mfnet_runs_share_the_backbones_initial_values():
  """Paired suites: MFNet and MF-KPSEM of one seed start from the same backbone
  parameters (Flax draws each module's from the seed and its name)."""
  def backbone(model):
    c = trainer.load_config("synthetic_c2d", model)
    m = trainer.create_model(**trainer.model_spec(c))
    x = jax.numpy.zeros((1, 8, 96, 96, 3))
    return jax.jit(m.init)(jax.random.PRNGKey(c.seed), x)["params"]
  plain, kpsem = backbone("mfnet,size=96"), backbone("mf_kpsem,size=96,at=conv4,g=8")
  assert "kpsem" in kpsem and "kpsem" not in plain
  for a, b in zip(jax.tree.leaves(plain["backbone"]), jax.tree.leaves(kpsem["backbone"])):
    np.testing.assert_array_equal(a, b)
