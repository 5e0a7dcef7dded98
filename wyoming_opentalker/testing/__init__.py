"""Support for tests and benchmarks: models built offline with the engines' own classes."""
