"""References the tests and benchmarks share (never imported by the package itself).

- ``naive_arese``: AReSE loop by loop from the paper's equations (numpy).
- ``torch_mfnet``: the PyTorch MFNet-3D, keys and shapes equal to the released checkpoint's.
- ``torch_kpsem``: PyTorch KPSEM and MF-KPSEM, written with explicit batch and set axes.
- ``fake_devices``: runs a script in a fresh process with N fake XLA:CPU devices.
- ``reference_clips``: clip sampling as it was with whole-video reads (Pillow decode, whole-frame
  resize, then crop), beside which the loader is tested.
- ``batch_norm_reference``: a float64 BatchNorm and its gradients, written out.
- ``tiny_models``: tiny random-weight checkpoints and a tiny training config.
- ``release_keys``: the released MFNet checkpoint's keys and shapes (../shared/reference).

Tests import what they share from here, never from each other.

The PyTorch modules need ``torch`` (``requirements-test.txt``).
"""
