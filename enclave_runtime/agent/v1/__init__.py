"""Generated gRPC modules for protos/teelab/host/v1/ (``make protos`` regenerates them)."""
