"""Triton's model_config.proto, compiled (model_config_pb2.py, by generate.sh); see README.md."""
