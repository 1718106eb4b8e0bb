"""Confidentiality policies: the policy model, decisions per role and column, masks, row filters and the rewrite."""
