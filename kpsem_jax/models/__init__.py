"""The models: MFNet-3D and the ResNet-50s as backbones, KPSEM and its AReSE sets, the
layers they share and their CPU kernels; ``classifier.create_model`` builds one."""
