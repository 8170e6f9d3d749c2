"""Scoring a served model: ranks and metrics per protocol (sampled candidates, full ranking,
AUC/LogLoss), and their uncertainty (bootstrap intervals, paired p-values)."""
