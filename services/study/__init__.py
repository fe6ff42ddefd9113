"""The StudySpec rules every organisation applies: validation, the canonical digest, parties, owners, columns (pure)."""
