"""sdpipe: contracts, logic and AWS adapters shared by the Lambdas, the images and the client."""

__version__ = "0.1.0"
