"""Uncertainty of study-level results: patient-clustered bootstrap intervals (`bootstrap`) and DeLong's test
for two correlated AUROCs (`delong`). Only numpy and pandas are imported here."""
