"""Generated gRPC modules for protos/teelab/kbs/v1/ (``make protos`` regenerates them)."""
