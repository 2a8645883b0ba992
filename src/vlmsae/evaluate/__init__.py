"""Evaluating an SAE: substitution, concept detection, sparse probing."""
