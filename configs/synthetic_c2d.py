"""The KPSEM suite's base: a time-blind C2D, with and without KPSEM, on synthetic_motion.

    python train.py --config=configs/synthetic_c2d.py --workdir=workdirs/c2d_kpsem
    python train.py --config=configs/synthetic_c2d.py:c2d_kpsem,k=9 --workdir=workdirs/c2d_k9

``arg``: a model, ``c2d`` or ``c2d_kpsem`` (the default), or an order-aware backbone with
and without KPSEM: ``inflated``/``inflated_kpsem`` (the same ResNet, its first convolution
in each block inflated to 3x1x1) or ``mfnet``/``mf_kpsem`` (MFNet-3D, one unit per stage, widths
32-64-64-128, 8 groups; KPSEM after ``conv2``, its 16x16 map at 64x64); then any of
``,k=<K>``
(regions), ``,g=<G>`` (AReSE sets), ``,fixed`` (fixed instead of adaptive regions),
``,de=<d_e>`` (embedding width), ``,at=<stage>`` (where KPSEM reads: ``res2`` .. ``res5``,
or ``conv2`` .. ``conv5`` for MFNet),
``,steps=<n>``, ``,lr=<lr>``, ``,size=<pixels>`` (the clips' side, default 64; 96 for the
``key_object`` sets, where MFNet's conv4 is 6x6), ``,data=<synthetic_motion config>`` (``translation``, the
default, or ``default``: the mixed set with rotations and approach/recede),
``,grad=<splits|paper|stopped>`` (KPSEM's ``match_gradient``, default ``splits``),
``,clip=<norm>`` (the global gradient-norm clipping, default 1; 0: none), ``,bclip=<norm>``
(the KPSEM branch's own gradient clipping, default 1; 0: none), ``,mlpadam=<lr>`` (the
split MLPs trained by Adam at this lr, default 0.003; 0: by the main SGD at ``mlplr`` times
its lr, ``,mlplr=<mult>``, default 1), ``,sum=<bool>`` (Eq. 12 summed over the K regions, the
default, or kept per region), ``,order=sorted`` (the frame-order control: AReSE sees the
feature frames sorted by their mean) and ``,readout=ordered``
(the classifier reads the per-frame features in time order instead of their mean: a
frame-order-aware control). Every variant of
``python -m kpsem_jax.experiments`` is one of these.

C2D is a 2-D ResNet (every kernel 1xkxk, one bottleneck per stage, width 16) that sees each
frame alone, as the paper's R3D does ("implemented as 1xkxk kernels", section 4.4), so
C2D -> C2D-KPSEM is the analogue of the paper's R3D -> R3D-KPSEM (Table 2d); only KPSEM can
tell a motion from its time reversal. Data: the ``translation``
config, 2048 training videos of 15 frames, an object crossing half to 0.7 of the frame in
one of 8 directions. Clips: 8 frames at interval 2 (frames 0, 2, .., 14, the same set
reversed) at 64x64, so the object moves 4.6-6.4 input pixels between sampled frames,
1.1-1.6 pixels of the stride-4 ``res2`` map KPSEM reads by default (16x16). SGD as in ``configs/synthetic.py`` (lr 0.05, x0.1 at 80% and 93%
of the steps) with the global gradient norm clipped at 1.
"""

from kpsem_jax import config_base

# Each model's backbone and the stages KPSEM can read, the first its default: the stride-4
# 16x16 map.
BACKBONES = {
    "c2d": ("resnet3d", dict(stage_depths=(1, 1, 1, 1), base_width=16, temporal_kernel=1),
            ("res2", "res3", "res4", "res5")),
    "inflated": ("resnet3d", dict(stage_depths=(1, 1, 1, 1), base_width=16, temporal_kernel=3),
            ("res2", "res3", "res4", "res5")),
    "mfnet": ("mfnet3d", dict(conv1_channels=16, stage_channels=(32, 64, 64, 128),
                              stage_depths=(1, 1, 1, 1), groups=8),
              ("conv2", "conv3", "conv4", "conv5")),
}
MODELS = {"c2d": "c2d", "c2d_kpsem": "c2d", "inflated": "inflated",
          "inflated_kpsem": "inflated",
          "mfnet": "mfnet", "mf_kpsem": "mfnet"}


def get_config(arg: str = "c2d_kpsem"):
  model, _, options = arg.partition(",")
  if model not in MODELS:
    raise ValueError(f"configs/synthetic_c2d.py: unknown model {model!r}; choose one of "
                     f"{', '.join(MODELS)}")
  backbone, backbone_kwargs, stages = BACKBONES[MODELS[model]]
  opts = config_base.parse_arg(options, "configs/synthetic_c2d.py", k=4, g=4, fixed=False, de=8,
                          at=stages[0], steps=600, data="translation", lr=0.05, grad="splits",
                          clip=1.0, bclip=1.0, mlplr=1.0, mlpadam=0.003, sum=True, order="time",
                          readout="mean", size=64)
  if opts.at not in stages:
    raise ValueError(f"configs/synthetic_c2d.py: at={opts.at!r} is not a stage of {model}; "
                     f"choose one of {', '.join(stages)}")
  c = config_base.load_config("synthetic")
  c.dataset.config = opts.data
  c.clip.update(dict(frames=8, interval=2, crop=opts.size,
                     train_scale=(opts.size, opts.size * 9 // 8), aspect=(0.9, 1.1),
                     flip=False, eval_resize=opts.size, eval_clips=1, eval_crops=1))
  c.model.backbone = backbone
  c.model.backbone_kwargs = dict(backbone_kwargs)
  c.model.use_kpsem = model.endswith("kpsem")
  c.model.readout = opts.readout
  c.model.kpsem_at = opts.at
  c.model.kpsem = dict(num_regions=opts.k, num_sets=opts.g, embed_dim=opts.de,
                       reduction_channels=(16, 16), adaptive=not opts.fixed,
                       match_gradient=opts.grad, sum_regions=opts.sum,
                       frame_order=opts.order)
  steps = opts.steps
  c.optimizer.update(dict(lr=opts.lr, warmup_steps=max(1, steps // 20),
                          clip_grad_norm=opts.clip, kpsem_clip_grad_norm=opts.bclip,
                          split_mlp_lr_mult=opts.mlplr, split_mlp_adam_lr=opts.mlpadam,
                          decay_steps=(int(steps * 0.8), int(steps * 0.93))))
  c.update(dict(batch_size=16, eval_batch_size=32, num_train_steps=steps,
                log_every=max(1, steps // 20), eval_every=steps,
                checkpoint_every=max(1, steps // 4), keep_checkpoints=1))
  return c
