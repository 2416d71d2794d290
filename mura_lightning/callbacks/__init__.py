"""Lightning callbacks: metric figures and tables, CAM heatmaps."""
