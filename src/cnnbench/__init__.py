"""cnnbench: train, evaluate and compare image classifiers on Tiny ImageNet, CIFAR-10 and MNIST."""

__version__ = "0.1.0"
