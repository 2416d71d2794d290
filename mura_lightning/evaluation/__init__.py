"""Scoring predictions: image and study metrics (`metrics`), decision thresholds (`thresholds`), temperature
scaling (`calibration`), patient-clustered bootstrap intervals (`bootstrap`), DeLong's test for two correlated
AUROCs (`delong`), repeat groups of a sweep (`repeats`), the terminal table (`tables`) and the files a test writes
(`outputs`)."""
