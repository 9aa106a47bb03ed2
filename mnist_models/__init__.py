"""mnist-cnn-bench: the seed's two MNIST CNNs, real data, one training loop, profiling and reports."""
