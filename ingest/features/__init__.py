"""Features out of a model (extract: forward passes, pooling) and into spectra (spectrum: the
streaming covariance, feature files)."""
