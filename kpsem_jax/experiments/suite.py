"""The experiment suite's definition: its models (variants of ``configs/synthetic_c2d.py``),
which row each is compared with, the data it runs on, and each run's config."""

from kpsem_jax.config_base import load_config
import dataclasses
from typing import Dict, List, Optional


@dataclasses.dataclass(frozen=True)
class Variant:
  """One model of a suite: its name, its group in the table, its variant of
  ``configs/synthetic_c2d.py`` (e.g. ``c2d_kpsem,k=9``) and, where it is not the base
  C2D-KPSEM, the name of the row it is compared with (``versus``)."""
  name: str
  group: str
  config: str
  versus: Optional[str] = None
  root: bool = False  # compared with no row (the C2D, a suite's plain backbone)


SWEPT_LRS = ("0.01", "0.02", "0.1", "0.2")  # the C2D's sweep (the suite's lr is 0.05)
CONTRAST_LRS = ("0.01", "0.1")  # the contrast beside the suite's 0.05 (docs/experiments.md)


def c2d_at(lr: str) -> Variant:
  """The C2D at learning rate ``lr``, compared with the suite's C2D (lr 0.05)."""
  return Variant(f"C2D, lr {lr}", "learning rate", f"c2d,lr={lr}", versus="C2D")


def contrast_at(lr: str) -> List[Variant]:
  """At learning rate ``lr``: C2D-KPSEM with the suite's clipping, and C2D and C2D-KPSEM
  without; each C2D-KPSEM is compared with the C2D beside it."""
  c2d_free = f"C2D, lr {lr}, no clipping"
  return [
      Variant(f"C2D-KPSEM, lr {lr}", "learning rate", f"c2d_kpsem,lr={lr}",
              versus=f"C2D, lr {lr}"),
      Variant(c2d_free, "learning rate", f"c2d,lr={lr},clip=0", versus=f"C2D, lr {lr}"),
      Variant(f"C2D-KPSEM, lr {lr}, no clipping", "learning rate",
              f"c2d_kpsem,lr={lr},clip=0", versus=c2d_free),
  ]


BASE = Variant("C2D-KPSEM (K=4, G=4, d_e=8, res2)", "core", "c2d_kpsem")
C2D = Variant("C2D", "core", "c2d")
CORE = [C2D, BASE]
SUITES: Dict[str, List[Variant]] = {
    "core": CORE,
    "ablation": CORE + [
        Variant("K=1 (single key point)", "regions K", "c2d_kpsem,k=1"),
        Variant("K=9", "regions K", "c2d_kpsem,k=9"),
        Variant("K=16", "regions K", "c2d_kpsem,k=16"),
        Variant("G=1 (one AReSE set)", "sets G", "c2d_kpsem,g=1"),
        Variant("G=2", "sets G", "c2d_kpsem,g=2"),
        Variant("G=8", "sets G", "c2d_kpsem,g=8"),
        Variant("fixed regions", "regions", "c2d_kpsem,fixed"),
        Variant("d_e=4", "embedding d_e", "c2d_kpsem,de=4"),
        Variant("d_e=16", "embedding d_e", "c2d_kpsem,de=16"),
        Variant("KPSEM after res3", "position", "c2d_kpsem,at=res3"),
        Variant("KPSEM after res4", "position", "c2d_kpsem,at=res4"),
    ],
    # Eq. 9's match weights differentiated as PyTorch's autograd does ("paper"),
    # against the default "stopped" gradient, with and without the suite's clipping.
    "gradient": CORE + [
        Variant("C2D-KPSEM paper gradient", "match gradient", "c2d_kpsem,grad=paper"),
        Variant("C2D-KPSEM paper gradient, no clipping", "match gradient",
                "c2d_kpsem,grad=paper,clip=0", versus="C2D-KPSEM paper gradient"),
        Variant("C2D-KPSEM stopped gradient, no clipping", "match gradient",
                "c2d_kpsem,grad=stopped,bclip=0,clip=0"),
        Variant("fixed regions", "regions", "c2d_kpsem,fixed"),
        Variant("fixed regions, paper gradient", "regions", "c2d_kpsem,fixed,grad=paper",
                versus="C2D-KPSEM paper gradient"),
        Variant("fixed regions, paper gradient, no clipping", "regions",
                "c2d_kpsem,fixed,grad=paper,clip=0",
                versus="C2D-KPSEM paper gradient, no clipping"),
    ],
    # A control: a time-ordered readout of the C2D's per-frame features, no KPSEM
    # (any readout that keeps frame order should pass the 50% order-blind ceiling too).
    "controls": CORE + [
        Variant("C2D ordered readout", "controls", "c2d,readout=ordered", versus="C2D"),
    ],
    # KPSEM on order-aware backbones (the C2D inflated to 3x1x1 in time, MFNet-3D), with the
    # C2D rows (the paper's time-blind R3D and R3D-KPSEM) for scale.
    "backbones": CORE + [
        Variant("Inflated ResNet (3x1x1)", "order-aware backbones", "inflated", versus="C2D"),
        Variant("Inflated ResNet-KPSEM", "order-aware backbones", "inflated_kpsem",
                versus="Inflated ResNet (3x1x1)"),
        Variant("MFNet", "order-aware backbones", "mfnet", versus="C2D"),
        Variant("MF-KPSEM", "order-aware backbones", "mf_kpsem", versus="MFNet"),
    ],
    # The C2D's learning-rate sweep, and the core contrast at other learning
    # rates, with the suite's clipping and without.
    "lr": CORE + [c2d_at(lr) for lr in SWEPT_LRS] + [
        row for lr in CONTRAST_LRS for row in contrast_at(lr)],
    # The default (the "splits" match gradient, the branch clip) at lr 0.01, 0.05
    # and 0.1, with the suite's global clipping and without it (the dataset configs' recipe).
    "default": CORE + [c2d_at(lr) for lr in CONTRAST_LRS] + [
        row for lr in CONTRAST_LRS for row in contrast_at(lr)] + [
            Variant("C2D, lr 0.05, no clipping", "learning rate", "c2d,clip=0", versus="C2D"),
            Variant("C2D-KPSEM, lr 0.05, no clipping", "learning rate", "c2d_kpsem,clip=0",
                    versus="C2D, lr 0.05, no clipping")],
}
# MFNet vs MF-KPSEM at 96x96 with KPSEM after conv4 (6x6, stride 16, the paper's
# place), G=8 as the paper, on a key_object set calibrated on MFNet alone; paired seeds
# (same initialisation of the shared parts, same batches).
MFNET = Variant("MFNet (96x96)", "MFNet contrast", "mfnet,size=96", root=True)
MF_KPSEM = Variant("MF-KPSEM (conv4, G=8)", "MFNet contrast", "mf_kpsem,size=96,at=conv4,g=8",
                   versus=MFNET.name)
SUITES.update({
    "calibration": [MFNET],
    "mfnet": [MFNET, MF_KPSEM,
              Variant("MF-KPSEM, frames sorted (control)", "MFNet contrast",
                      f"{MF_KPSEM.config},order=sorted", versus=MF_KPSEM.name)],
    # The paper's Table 2 a-c on MF-KPSEM, and Eq. 12 kept per region (the paper is silent).
    "mfnet_ablation": [MF_KPSEM] + [
        Variant(name, "MF-KPSEM ablations", f"{MF_KPSEM.config},{option}", versus=MF_KPSEM.name)
        for name, option in (("MF-KPSEM, K=1", "k=1"), ("MF-KPSEM, fixed regions", "fixed"),
                             ("MF-KPSEM, G=1", "g=1"),
                             ("MF-KPSEM, Eq. 12 per region", "sum=false"))],
})
PAIRED = frozenset({"calibration", "mfnet", "mfnet_ablation"})  # seed-for-seed comparisons

# The base C2D-KPSEM is also the K=4, G=4, adaptive, d_e=8 and res2 point of each sweep; every
# ablation row is compared with it, and it with C2D.


def reference(variant: Variant) -> Optional[Variant]:
  """The row a variant is compared with: C2D for the base C2D-KPSEM, its ``versus`` row,
  else the base."""
  if variant == C2D or variant.root:
    return None
  if variant.versus:
    return next(v for suite in SUITES.values() for v in suite if v.name == variant.versus)
  return C2D if variant == BASE else BASE


DATA = {  # synthetic_motion's configs the suite runs on, and how the table describes them
    "translation": "synthetic_motion translation (translations in 8 directions, in "
                   "time-reversed pairs; chance 12.5%, a frame-order-blind model tops out at "
                   "50%)",
    "translation_hard": "synthetic_motion translation_hard (the translation set with a "
                        "smaller object and 3x the camera motion; chance 12.5%, a "
                        "frame-order-blind model tops out at 50%)",
    **{f"key_object_{n}": f"synthetic_motion key_object_{n} (a small striped key object "
                          f"among {n} plain distractors of its size, 8 directions in "
                          "time-reversed pairs; chance 12.5%, a frame-order-blind model tops "
                          "out at 50%; 1024 test videos)" for n in (0, 1, 2, 4, 8)},
    **{f"key_object_{n}_{m}": f"synthetic_motion key_object_{n}_{m} (key_object_{n} with {m} "
                              "training videos a class; 1024 test videos)"
       for n in (4, 8) for m in (16, 32)},
    **{f"key_object_striped_8_{m}": "synthetic_motion key_object_striped_8_{m} (a small "
                                     "red-orange striped key object among 8 striped "
                                     "distractors of other hues, {m} training videos a class, "
                                     "8 directions in time-reversed pairs; chance 12.5%, a "
                                     "frame-order-blind model tops out at 50%; 1024 test "
                                     "videos)".format(m=m) for m in (4, 8, 16, 32, 64)},
    **{f"key_object_wrap_{s}": f"synthetic_motion key_object_wrap_{s} (key_object_4 whose "
                               "discs wrap around the frame's edges, crossing "
                               f"{s / 100:g}-{s / 100 + 0.2:g} frame sizes a clip, 8 "
                               "directions in time-reversed pairs; chance 12.5%, a "
                               "frame-order-blind model tops out at 50%; 1024 test videos)"
       for s in (75, 100, 150, 165, 175, 200, 250, 300)},
    "key_object_wrap_far30": "synthetic_motion key_object_wrap_far30 (key_object_4 whose "
                             "discs wrap around the frame's edges; 70% of the videos cross "
                             "1.2-1.5 frame sizes a clip, 30% 2.2-2.4; 8 directions in "
                             "time-reversed pairs; chance 12.5%, a frame-order-blind model "
                             "tops out at 50%; 1024 test videos)",
    "key_object_wrap_mix": "synthetic_motion key_object_wrap_mix (key_object_4 whose discs "
                           "wrap around the frame's edges, crossing 1.2-2.2 frame sizes a "
                           "clip, 8 directions in time-reversed pairs; chance 12.5%, a "
                           "frame-order-blind model tops out at 50%; 1024 test videos)",
    **{f"key_object_faint_{a}": f"synthetic_motion key_object_faint_{a} (key_object_wrap_150 "
                                f"whose key object each video draws at an opacity of "
                                f"0-{a / 100:g}, 8 directions in time-reversed pairs; chance "
                                "12.5%, a frame-order-blind model tops out at 50%; 1024 test "
                                "videos)"
       for a in (10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 100)},
    **{f"key_object_faint_test_{a}": f"synthetic_motion key_object_faint_test_{a} "
                                     "(key_object_wrap_150, trained on opaque key objects, "
                                     "tested on key objects each video draws at an opacity "
                                     f"of 0-{a / 100:g}, 8 directions in time-reversed "
                                     "pairs; chance 12.5%, a frame-order-blind model tops "
                                     "out at 50%; 1024 test videos)"
       for a in (10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 100)},
    # 16 frames: a clip and its reversal are sampled at different moments (docs/experiments.md)
    "default": "synthetic_motion default (right/left, down/up, clockwise/anticlockwise, "
               "approach/recede, in time-reversed pairs; chance 12.5%)",
}


def run_config(variant: Variant, seed: int, steps: int, data_dir: str,
               data: str = "translation"):
  """``configs/synthetic_c2d.py:<variant.config>,steps=<steps>,data=<data>`` with ``seed``
  and ``data_dir``."""
  c = load_config("synthetic_c2d", f"{variant.config},steps={steps},data={data}")
  c.seed = seed
  c.dataset.data_dir = data_dir
  return c


def slug(name: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").replace("__", "_")


def sweep_setting(variant: Variant, key: str) -> Optional[int]:
  """The K (``key="k"``) or G (``"g"``) of a variant in that sweep: its own option, or the
  base's (K=4, G=4) for the base; None for a variant outside the sweep."""
  if variant.config == BASE.config:
    return 4
  model, *options = variant.config.split(",")
  opts = dict(o.split("=", 1) for o in options if "=" in o)
  if model == "c2d_kpsem" and len(options) == 1 and key in opts:
    return int(opts[key])
  return None
