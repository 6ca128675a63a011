"""Pictures: skeleton drawing, report and prediction figures, video overlays."""
