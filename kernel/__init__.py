"""teelab.kernel"""
