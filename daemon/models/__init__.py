"""The models: the repository of serving generations, how a version is assembled, the models
directory (scan, watcher) and pipelines."""
