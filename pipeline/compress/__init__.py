"""The algorithms: pruning to a budget, the distillation loop, equalization and bias correction,
sensitivity and fallback, calibration sets, accuracy measurement. They take models and arrays, never a
run `Context`, so stages, tests and benchmarks call them directly."""
