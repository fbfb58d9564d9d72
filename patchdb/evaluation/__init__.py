"""Evaluation of the machines: metrics, approximate against exact (validate), calibration against a
network, comparison with a network, the factories that make a machine or a network from options,
and merging runs split by seed."""
