"""Guided scores: classifier-free guidance of a class-conditional model, and classifier guidance by a noisy
classifier's gradient."""
from .classifier import ClassifierGuidance, OracleClassifier, classifier_log_prob_grad
from .free import ClassifierFreeGuidance

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "OracleClassifier", "classifier_log_prob_grad"]
