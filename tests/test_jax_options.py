"""JAX options are set by entry points, never by importing the package."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from kpsem_jax import jax_options
from kpsem_jax.models import layers
from kpsem_jax.models.classifier import create_model
from kpsem_jax.models.kpsem import KPSEM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_the_package_leaves_xla_flags_and_jax_config_alone():
  modules = ["kpsem_jax", "kpsem_jax.models.classifier", "kpsem_jax.train.trainer",
             "kpsem_jax.inference.predictor", "kpsem_jax.predict", "kpsem_jax.visualize",
             "kpsem_jax.convert"]
  script = (f"import os, jax\nimport {', '.join(modules)}\n"
            "print(repr(os.environ.get('XLA_FLAGS')), jax.config.jax_threefry_partitionable)")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["'--xla_force_host_platform_device_count=2'", "True"]


def test_configure_adds_the_flag_and_keeps_a_users_choice():
  script = ("import os\nfrom kpsem_jax import jax_options\njax_options.configure()\n"
            "import jax\nprint(repr(os.environ['XLA_FLAGS']), jax.config.jax_threefry_partitionable)")
  for before, after in (("--xla_force_host_platform_device_count=2",
                         "'--xla_force_host_platform_device_count=2 "
                         "--xla_cpu_experimental_ynn_fusion_type='"),
                        ("--xla_cpu_experimental_ynn_fusion_type=default",
                         "'--xla_cpu_experimental_ynn_fusion_type=default'")):
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, XLA_FLAGS=before))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rsplit(" ", 1) == [after, "False\n"]


def test_one_set_kpsem_without_the_flag_is_an_error_not_a_crash(monkeypatch):
  assert jax.default_backend() == "cpu"
  x = jnp.zeros((1, 3, 4, 4, 2))
  kpsem = dict(embed_dim=2, reduction_channels=(2,))
  create_model("resnet3d", 3, dict(stage_depths=(1, 1, 1, 1), base_width=2),
               kpsem=dict(kpsem, num_sets=2), kpsem_at="res2")
  monkeypatch.setenv("XLA_FLAGS", "")
  # Checked where the model is built (create_model), not while it is traced.
  with pytest.raises(RuntimeError, match="KPSEM with one AReSE set .* XLA_FLAGS contains "
                     "--xla_cpu_experimental_ynn_fusion_type="):
    create_model("resnet3d", 3, dict(stage_depths=(1, 1, 1, 1), base_width=2),
                 kpsem=dict(kpsem, num_sets=1), kpsem_at="res2")
  KPSEM(num_sets=2, **kpsem).init(jax.random.PRNGKey(0), x)
  # Too late to set it now that JAX runs: configure says so instead of silently failing.
  with pytest.raises(RuntimeError, match="after JAX started its backends"):
    jax_options.configure()


def test_kpsem_jax_onednn_0_turns_the_kernels_off_and_auto_resolves_to_xla():
  script = ("from kpsem_jax import jax_options\n"
            "from kpsem_jax.models import cpu_kernels, layers\n"
            "print(jax_options.cpu_kernels_allowed(), cpu_kernels.available(),\n"
            "      layers.resolve_conv_strategy('auto'), cpu_kernels.unavailable_reason())")
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, KPSEM_JAX_ONEDNN="0"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["False", "False", "auto_xla", "turned", "off", "by",
                                "KPSEM_JAX_ONEDNN=0"]
  assert layers.resolve_conv_strategy("onednn") == "onednn"  # a concrete one stays
  with pytest.raises(ValueError, match="unknown convolution strategy 'fast'"):
    layers.resolve_conv_strategy("fast")
