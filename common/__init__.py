"""The vocabulary every layer shares: errors, tensors, their wire codecs, owned background
tasks and the garbage-collector policy. Imports nothing else of inferd."""
