"""Test helpers shipped with prunekit: the tiny fixture zoo and reusable contract checks."""
