"""Lightning callbacks: metric figures and tables, CAM heatmaps, progress for terminals and log files."""
