"""PyTorch MFNet -> kpsem-jax: key list, converter, logits parity, bad inputs, inference API."""

import os
import subprocess
import sys

from flax import traverse_util
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kpsem_jax import convert
from kpsem_jax.inference import porting
from kpsem_jax.inference.predictor import load_predictor
from kpsem_jax.models.classifier import normalize  # noqa: E402
from kpsem_jax.testing import release_keys  # noqa: E402
from kpsem_jax.train import checkpoint  # noqa: E402
from kpsem_jax.testing.torch_mfnet import (  # noqa: E402
    MFNET_3D, TINY, randomize, relative_error, save, torch_logits)

torch.set_num_threads(2)
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "videos")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_net():
  return randomize(MFNET_3D(num_classes=7, **TINY), seed=1)


def test_reference_model_has_the_original_keys_and_shapes():
  reference = release_keys.reference_state_dict()
  if reference is None:
    pytest.skip(f"{release_keys.REFERENCE} not found (../shared beside the repo)")
  ours = {k: tuple(v.shape) for k, v in MFNET_3D().state_dict().items()}
  assert ours == reference
  assert sum(p.numel() for p in MFNET_3D().parameters()) == 7_996_368


@pytest.mark.parametrize("fmt", [
    dict(),  # zip format, bare state_dict
    dict(legacy=True, wrap=True, module_prefix=True, drop_counters=True),  # as released
    dict(wrap=True, module_prefix=True),
    dict(legacy=True, drop_counters=True),
])
def test_converted_tiny_mfnet_matches_pytorch(tiny_net, tmp_path, fmt):
  path = save(tiny_net.state_dict(), str(tmp_path / "mfnet.pth"), **fmt)
  meta = convert.run(path, str(tmp_path / "out"), log=lambda *a: None)
  assert meta["converted"] == len([k for k in tiny_net.state_dict()
                                   if not k.endswith("num_batches_tracked")])
  assert meta["model"]["backbone_kwargs"] == dict(TINY, stage_channels=list(
      TINY["stage_channels"]), stage_depths=list(TINY["stage_depths"]))
  predictor = load_predictor(str(tmp_path / "out"))
  clips = np.random.default_rng(0).standard_normal((2, 8, 64, 64, 3)).astype(np.float32)
  assert relative_error(predictor.logits(clips), torch_logits(tiny_net, clips)) < 1e-4


@pytest.mark.slow
def test_full_size_mfnet_matches_pytorch_on_a_16x224x224_clip(tmp_path):
  net = randomize(MFNET_3D(), seed=2)
  path = save(net.state_dict(), str(tmp_path / "k400.pth"), legacy=True, wrap=True,
              module_prefix=True, drop_counters=True)
  meta = convert.run(path, str(tmp_path / "out"), log=lambda *a: None)
  assert meta["converted"] == 351 and meta["parameters"] == 7_996_368
  clip = np.random.default_rng(1).standard_normal((1, 16, 224, 224, 3)).astype(np.float32)
  assert relative_error(load_predictor(str(tmp_path / "out")).logits(clip),
                        torch_logits(net, clip)) < 1e-4


def test_new_class_count_and_mf_kpsem_keep_the_backbone(tiny_net, tmp_path):
  path = save(tiny_net.state_dict(), str(tmp_path / "mfnet.pth"))
  sd = {k: v.numpy() for k, v in tiny_net.state_dict().items()}
  for model, classes, in_features in (("mfnet3d", 5, 32), ("mf_kpsem", 5, 32 + 7 * 96)):
    out = str(tmp_path / model)
    meta = convert.run(path, out, num_classes=5, model=model, log=lambda *a: None)
    variables, saved_meta = checkpoint.load_variables(out)
    # what run() returned, plus the SHA-256 of the variables written with it and its own
    assert saved_meta == dict(meta, sha256={"variables": checkpoint.digest(variables),
                                            "metadata": checkpoint.metadata_digest(meta)})
    assert "classifier.weight" in meta["initialised"]
    assert variables["params"]["classifier"]["kernel"].shape == (in_features, classes)
    assert ("kpsem" in variables["params"]) == (model == "mf_kpsem")
    for key, (collection, p) in porting.expected_torch_keys(variables).items():
      if not key.startswith("classifier"):
        leaf = traverse_util.flatten_dict(variables[collection])[p]
        np.testing.assert_array_equal(porting.flax_to_torch_array(p, leaf), sd[key], err_msg=key)


def test_inflating_a_2d_mfnet(tiny_net, tmp_path):
  sd = tiny_net.state_dict()
  flat2d = {k: (v.sum(dim=2) if v.ndim == 5 else v) for k, v in sd.items()}  # (O, I, kh, kw)
  path = save(flat2d, str(tmp_path / "mfnet2d.pth"))
  with pytest.raises(convert.ConversionError, match="mismatched"):
    convert.run(path, str(tmp_path / "no"), log=lambda *a: None)
  meta = convert.run(path, str(tmp_path / "out"), inflate_2d=True, log=lambda *a: None)
  assert meta["inflated_2d"] == sum(1 for v in sd.values() if v.ndim == 5)
  variables, _ = checkpoint.load_variables(str(tmp_path / "out"))
  m1 = variables["params"]["backbone"]["conv2"]["B01"]["conv_m1"]["conv"]["kernel"]  # kt = 3
  w2d = flat2d["conv2.B01.conv_m1.conv.weight"].numpy()
  for t in range(3):
    np.testing.assert_allclose(m1[t], w2d.transpose(2, 3, 1, 0) / 3, rtol=1e-6)
  i1 = variables["params"]["backbone"]["conv2"]["B01"]["conv_i1"]["conv"]["kernel"]  # kt = 1
  np.testing.assert_array_equal(i1[0], flat2d["conv2.B01.conv_i1.conv.weight"].numpy()
                                .transpose(2, 3, 1, 0))


def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "kpsem_jax.convert", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bad_inputs_give_one_paragraph_errors_and_write_nothing(tiny_net, tmp_path):
  good = save(tiny_net.state_dict(), str(tmp_path / "good.pth"))
  truncated = str(tmp_path / "truncated.pth")
  with open(good, "rb") as f, open(truncated, "wb") as g:
    g.write(f.read()[: os.path.getsize(good) // 2])
  text = str(tmp_path / "notes.pth")
  with open(text, "w") as f:
    f.write("this is not a checkpoint\n")
  resnet = save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 2048)},
                str(tmp_path / "resnet.pth"))
  sd = dict(tiny_net.state_dict())
  sd["conv3.B01.conv_m1.conv.weight"] = torch.zeros(16, 2, 3, 3, 3)
  del sd["conv4.B02.conv_i1.bn.weight"], sd["tail.bn.running_var"]
  sd["extra.weight"] = torch.zeros(3)
  broken = save(sd, str(tmp_path / "broken.pth"))
  noise = str(tmp_path / "noise.pth")
  with open(noise, "wb") as f:
    f.write(np.random.default_rng(0).bytes(300))
  cases = {truncated: "not a readable PyTorch checkpoint", text: "not a readable PyTorch",
           noise: "not a readable PyTorch checkpoint",
           resnet: "is not an MFNet checkpoint",
           broken: "2 missing: conv4.B02.conv_i1.bn.weight; tail.bn.running_var"}
  for i, (path, message) in enumerate(cases.items()):
    out = str(tmp_path / f"out{i}")
    result = run_cli(f"--pytorch={path}", f"--output={out}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert path in result.stderr
    assert "weights_only" not in result.stderr  # PyTorch's unsafe advice is not repeated
    assert not os.path.exists(out)
  assert "1 unexpected: extra.weight" in result.stderr
  assert "conv3.B01.conv_m1.conv.weight: checkpoint (16, 2, 3, 3, 3)" in result.stderr
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temp leftovers

  # An output path that is a file: one line, the file untouched.
  (tmp_path / "a_file").write_text("keep me")
  result = run_cli(f"--pytorch={good}", f"--output={tmp_path / 'a_file'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip() == (f"error: --output={tmp_path / 'a_file'} is a file, not a "
                                   "folder; choose another path.")
  assert (tmp_path / "a_file").read_text() == "keep me"

  result = run_cli(f"--pytorch={broken}", f"--output={tmp_path / 'partial'}", "--allow_partial")
  assert result.returncode == 0, result.stderr
  assert "2 missing" in result.stdout and "done:" in result.stdout
  _, meta = checkpoint.load_variables(str(tmp_path / "partial"))
  assert "tail.bn.running_var" in meta["initialised"]
  # Readable by others as the umask allows (not mkdtemp's 0700).
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(tmp_path / "partial").st_mode & 0o777 == 0o777 & ~umask


def test_a_killed_conversions_temporary_folder_is_removed_by_the_next(tiny_net, tmp_path):
  good = save(tiny_net.state_dict(), str(tmp_path / "good.pth"))
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  abandoned = tmp_path / f".out.tmp-{dead}-x1y2"  # as a kill -9 mid-write leaves it
  (abandoned / "checkpoints").mkdir(parents=True)
  live = tmp_path / f".out.tmp-{os.getpid()}-a1b2"  # a conversion still running
  live.mkdir()
  convert.run(good, str(tmp_path / "out"), log=lambda *a: None)
  assert not abandoned.exists() and live.exists()
  assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".out")) == [live.name]


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch):
  path = str(tmp_path / "x.pth")
  open(path, "wb").close()
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(convert.ConversionError, match="pip install torch==2.13.0"):
    convert.read_state_dict(path)


def test_predict_on_a_real_video_matches_pytorch(tiny_net, tmp_path):
  video_path = os.path.join(FIXTURES, "kinetics400_arm_wrestling.mp4")
  if not os.path.exists(video_path):
    pytest.skip(f"{video_path} not found (../shared/fixtures beside the repo)")
  path = save(tiny_net.state_dict(), str(tmp_path / "mfnet.pth"))
  convert.run(path, str(tmp_path / "out"), log=lambda *a: None)
  predictor = load_predictor(str(tmp_path / "out"))
  assert predictor.clip_spec.num_clips == 10 and predictor.clip_spec.num_crops == 3  # MFNet's
  spec = predictor.with_spec(num_clips=2, num_crops=1, crop=112, eval_resize=128)
  top = predictor.predict(video_path, top_k=3, spec=spec, batch_size=4)
  assert [name for name, _ in top] == sorted([n for n, _ in top], key=lambda n: -dict(top)[n])
  assert len(top) == 3 and all(name.startswith("class_") for name, _ in top)
  # Reference: the same two windows decoded independently, through PyTorch.
  import av  # pylint: disable=import-outside-toplevel
  with av.open(video_path) as container:
    frames = [f.reformat(width=170, height=128, format="rgb24").to_ndarray()
              for f in container.decode(video=0)]
  assert len(frames) == 280
  starts = np.round(np.linspace(0, 280 - 31, 2)).astype(int)  # a window spans 15 x 2 + 1
  clips = np.stack([np.stack(frames)[s + 2 * np.arange(16), 8:120, 29:141] for s in starts])
  probs = torch.softmax(torch.from_numpy(torch_logits(tiny_net, np.asarray(normalize(clips)))),
                        -1).mean(0).numpy()
  for name, p in top:
    np.testing.assert_allclose(p, probs[int(name.split("_")[1])], rtol=1e-4)


def test_every_command_line_help_shows_its_usage_lines_apart():
  """A backslash ending a docstring line continues it: --help would run the usage lines
  together into one long line."""
  import ast  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  paths = glob.glob(os.path.join(REPO, "kpsem_jax", "*.py")) + [os.path.join(REPO, "train.py")]
  for path in paths:
    doc = ast.get_docstring(ast.parse(open(path).read()), clean=False) or ""
    longest = max((len(line) for line in doc.splitlines()), default=0)
    assert longest <= 100, (path, longest)
