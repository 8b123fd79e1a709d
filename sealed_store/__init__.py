"""teelab.sealed_store"""
