"""The sdpipe command line and Python client."""
