pytest_plugins = ["sdpipe_local.pytest_plugin"]
