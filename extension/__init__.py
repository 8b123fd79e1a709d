"""teelab.extension"""
