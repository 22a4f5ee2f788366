"""Questions asked of the recorded frames: nearest frames (text, image, frame), scene changes, runs."""
