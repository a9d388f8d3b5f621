"""The embedded local stack: template.yaml on moto in server mode, real handlers in workers."""
