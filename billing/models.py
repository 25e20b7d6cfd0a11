"""What usage cost and what it was worth: rollups, chargeback statements, value reports."""
