"""Small infrastructure every layer may use: atomic writes, seeded draws, interruption, compact string tables."""
