"""teelab.enclave_runtime"""
