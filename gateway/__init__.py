"""teelab.gateway"""
