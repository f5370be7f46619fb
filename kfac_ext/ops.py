"""The kfac_ext op surface (placeholder: filled in by the ops work)."""
