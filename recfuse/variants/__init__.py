"""Online A/B: deterministic assignment of users to variants, exposure logging (shared by service and analysis)."""
