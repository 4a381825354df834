"""Evaluation of a trained run: the paper's tables at tiny scale, with exact step labels."""
